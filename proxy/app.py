"""The Gateway: the proxy as one low-level aiohttp handler, with its one error-mapping step.

One request flows one way: match -> authenticate -> authorize -> deliver. S3 is not touched
before authorization succeeds, so an unauthorized caller learns nothing about which keys exist.
Errors become responses in exactly one place (`Gateway.__call__`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from .accesslog import AccessRecord
from .auth import Clock, TokenVerifier, extract_token
from .config import Config, CorsSettings, RateLimitSettings, Route
from .cors import add_headers, preflight_headers, response_headers
from .delivery import (
    LinkCache,
    Outcome,
    SignedLink,
    redirect_response,
    sign_link,
    stream,
    wants_json,
)
from .edge import edge_refusal
from .engines import create_engine
from .errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    NotModified,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
    Unauthenticated,
    UnsupportedMediaType,
)
from .jwks import HttpJson
from .limits import TooManyRequests
from .links import LINK_AUDIENCE, LinkTarget, LinkVerifier
from .login import SignIn
from .metacache import MISSING, MetadataCache
from .objectcache import ObjectCache
from .ops import (
    CONTENT_TYPE,
    Check,
    MeasuredStorage,
    Readiness,
    Telemetry,
    live_response,
    multiprocess_directory,
    ready_response,
    storage_checks,
)
from .policy import Rule
from .presentation import presentation, signed_overrides
from .routing import Router
from .state import Bucket, State, create_state
from .state.admin import answer_revocations
from .storage import Storage
from .uploads import post_form, receive, redirect_put, upload_target

log = logging.getLogger("proxy")

Page = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class Gateway:
    """The whole proxy as one aiohttp low-level handler: `web.Server(gateway)`.

    aiohttp's Application layer (router, middleware chain, signals) is not used: the proxy
    routes by itself on the raw path, and skipping that layer is a fifth of a small request's
    cost. `open()` before serving, `close()` after.
    """

    def __init__(
        self,
        config: Config,
        storage: Storage | None = None,
        clock: Clock = time.time,
        telemetry: Telemetry | None = None,
    ) -> None:
        # A reloaded config may be handed the old gateway's telemetry: counters go on.
        self.telemetry = telemetry or Telemetry()
        self.in_flight = 0  # handlers that have not returned (graceful shutdown waits)
        # Set on SIGTERM: still serving, but about to stop (readiness probes answer 503).
        self.draining = False
        # Called with each reload's outcome: "ok", "invalid" or "error".
        self.on_reload: Callable[[str], None] = self._count_reload
        self.config = config  # the config new requests are served with
        self._clock = clock
        self._resources: list[_Resource] = []
        self._sampler: asyncio.Future[None] | None = None
        telemetry = self.telemetry
        if storage is None:
            s3 = create_engine(config.settings.s3)
            self._resources.append(s3)
            telemetry.watch_pool(s3.pool_load)
            storage = s3
        # Opened whether or not any issuer has a jwks_url now: a reload may add one.
        self._http_json = HttpJson(config.settings.auth.jwks.timeout)
        self._resources.append(self._http_json)
        # The storage (and its S3 connection pool) lives as long as the Gateway: a reload
        # keeps it, so s3 settings other than redirect_cache_control need a restart.
        self._storage = MeasuredStorage(storage, telemetry)
        # Revocations, rate limits and stream slots live here, not in the handler: they (and
        # a Redis pool with its poller) outlive every handler a reload swaps in. A reload
        # retunes them (limits, when_down, lifetimes); a change of state.backend, url,
        # key_prefix, timeout or max_connections needs a restart.
        self.state = create_state(config.settings, clock)
        self._resources.append(self.state)
        self.streams = self.state.streams
        handler = self._handler = _Handler(
            config, self._storage, clock, self._http_json, telemetry, self.state
        )
        telemetry.watch_streams(lambda: self.streams.in_use)
        telemetry.watch_requests(lambda: self.in_flight)
        self._pages: dict[str, Page] = {}
        self._set_probes(config, handler)

    def _set_probes(self, config: Config, handler: _Handler) -> None:
        health = config.settings.health
        self.readiness = Readiness(
            _readiness_checks(config, self._storage, handler.verifier, self.state),
            health.cache,
            health.timeout,
            self._clock,
        )
        self._probes = {
            path: probe
            for path, probe in ((health.live_path, self._live), (health.ready_path, self._ready))
            if path is not None
        }

    def reload(self, config: Config) -> None:
        """Serve new requests with `config`. A request in flight finishes on the handler it
        started with (it holds a reference to it; the old handler is freed after the last
        one). If building the new handler raises, the old one stays in place."""
        handler = _Handler(
            config,
            self._storage,
            self._clock,
            self._http_json,
            self.telemetry,
            self.state,
            self._handler,
        )
        self._handler, self.config = handler, config
        self._set_probes(config, handler)  # the buckets to check may have changed

    def _count_reload(self, outcome: str) -> None:
        self.telemetry.config_reloaded(outcome == "ok")

    def add_pages(self, pages: Mapping[str, Page]) -> None:
        """Answer these exact paths (GET/HEAD) before any route: the demo's own pages."""
        self._pages.update(pages)

    async def open(self) -> None:
        for resource in self._resources:
            await resource.open()
        if multiprocess_directory() is not None:
            # One of several workers: another process renders, so numbers are written out.
            self._sampler = asyncio.ensure_future(self.telemetry.sample_periodically())

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
            self.telemetry.sample()
        for resource in reversed(self._resources):
            await resource.close()

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Time and log the request, count it, and turn every error into a response (the
        only place that happens)."""
        # The whole path: share links and fixed paths compare it; the log record shortens it.
        path = request.raw_path.split("?", 1)[0]
        probe = self._probes.get(path)
        if probe is not None:
            return await probe(request)
        started = time.perf_counter()
        self.in_flight += 1
        record = AccessRecord(
            method=request.method, path=path, client=request.remote, started=started
        )
        refusal = edge_refusal(request)
        try:
            if refusal is not None:
                raise refusal
            page = self._pages.get(path) if self._pages else None
            if page is not None:
                record.route = "page"
                if request.method not in ("GET", "HEAD"):
                    raise MethodNotAllowed("pages take GET", allowed="GET, HEAD")
                response = await page(request)
            else:
                # Read once: a reload during this request does not change its handler.
                response = await self._handler.handle(request, record)
        except NotModified as exc:
            response = web.Response(status=304, headers=exc.headers)
        except ProxyError as exc:
            record.reason = exc.reason
            if isinstance(exc, TooManyRequests):
                self.telemetry.rate_limited(record.route, _LIMITS.get(exc.reason, "other"))
            response = _error_response(exc.status, exc.detail, exc.headers)
            if isinstance(exc, RequestTimeout | PayloadTooLarge):
                response.force_close()  # the rest of a trickled or oversized body is unwanted
        except ConnectionError:
            # The client went away while we answered: nothing to send, and not our error.
            record.reason = "client disconnected"
            response = web.Response(status=499)  # nginx's "client closed request", for the log
        except web.HTTPException as exc:
            # aiohttp's own refusals: keep the status, use the proxy's body format.
            record.reason = exc.reason
            response = _error_response(exc.status, exc.reason.lower(), {})
        except Exception:
            log.exception("unhandled error for %s %s", request.method, record.path)
            record.reason = "internal error"
            response = _error_response(500, "internal error", {})
        finally:
            self.in_flight -= 1
        record.status = response.status
        if not response.prepared:
            if record.cors:
                add_headers(response.headers, record.cors)
            if request.method != "HEAD":
                record.bytes_sent = response.content_length or 0
        ended = time.perf_counter()
        self.telemetry.observe_request(
            record.route,
            record.delivery,
            record.method,
            record.status,
            record.bytes_sent,
            ended - started,
            (record.first_byte or ended) - started,
        )
        record.emit(self._clock(), ended - started)
        return response

    async def _live(self, request: web.BaseRequest) -> web.StreamResponse:
        """Liveness: the event loop runs. No auth, no S3, no log line."""
        if request.method not in ("GET", "HEAD"):
            return _error_response(405, "probes take GET", {"Allow": "GET, HEAD"})
        return live_response()

    async def _ready(self, request: web.BaseRequest) -> web.StreamResponse:
        """Readiness: 200 only when this process can serve. No auth needed, no log line; what
        is wrong only for a caller that passes admin.access (ops/health.py's rule)."""
        if request.method not in ("GET", "HEAD"):
            return _error_response(405, "probes take GET", {"Allow": "GET, HEAD"})
        detailed = await self._is_operator(request)
        return await ready_response(self.readiness, self.draining, detailed)

    async def _is_operator(self, request: web.BaseRequest) -> bool:
        """Whether the request carries a token that passes admin.access. A probe without one
        (the orchestrator's) costs nothing; a bad one is no error, just no details."""
        rule = self.config.admin_access
        if rule is None or not rule.needs_token:
            return False  # an admin endpoint open to all is no reason to open the details
        query = request.query if request.rel_url.raw_query_string else _NO_QUERY
        found = extract_token(self.config.settings.auth, request.headers, None, query)
        if found is None:
            return False
        try:
            claims = await self._handler.verifier.verify(found[1])
            self.state.check_token(claims)
        except ProxyError:
            return False
        return rule.denial(claims, {}) is None


# TooManyRequests reasons (limits.py) -> the `limit` label of proxy_rate_limited_total.
_LIMITS = {"rate limit per client": "client", "rate limit per subject": "subject"}


def _readiness_checks(
    config: Config, storage: Storage, verifier: TokenVerifier, state: State
) -> list[Check]:
    checks = storage_checks(storage, [route.settings.bucket for route in config.routes])
    if config.settings.state.backend == "redis":
        # Redis unreachable: tokens are refused (by default), so this process is not ready.
        checks.append(Check("redis", state.check))

    async def key_sets() -> str | None:
        missing = await verifier.missing_key_sets()
        return f"no keys loaded from {', '.join(missing)}" if missing else None

    if any(issuer.jwks_url for issuer in config.settings.auth.issuer_list()):
        checks.append(Check("jwks", key_sets))
    return checks


class _Resource(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...


def _error_response(status: int, detail: str, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"error": detail}).encode(),
        content_type="application/json",
        headers={**headers, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


class _Handler:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        clock: Clock,
        fetch_json: HttpJson,
        telemetry: Telemetry,
        state: State,
        previous: _Handler | None = None,
    ) -> None:
        """`previous`: the handler this one replaces on a reload. Its state that no setting
        changed is kept: none of it depends on a route's rules (caches are keyed by bucket and
        key or by everything a URL is a function of; rate buckets clamp to the new burst), so
        a route whose rules changed is answered by the new rules at once."""
        settings = config.settings
        self._settings = settings

        def kept(section: str) -> _Handler | None:
            """The previous handler, if this section of the settings did not change."""
            if previous is None:
                return None
            unchanged = getattr(previous._settings, section) == getattr(settings, section)
            return previous if unchanged else None

        self._telemetry = telemetry
        metrics = settings.metrics
        self._metrics_path = metrics.path if metrics.enabled and metrics.on_main_port else None
        self._metrics_access = config.metrics_access
        self._admin_path = settings.admin.path
        self._admin_access = config.admin_access
        self._state = state
        self._routes = config.routes
        self._router = Router([route.pattern for route in config.routes])
        self._auth = settings.auth
        same_auth = kept("auth")  # then its verifier's fetched JWKS keys are still right
        self.verifier: TokenVerifier = (
            same_auth.verifier if same_auth else TokenVerifier(settings.auth, clock, fetch_json)
        )
        login = settings.auth.login
        self.sign_in: SignIn | None = (
            None
            if login is None
            else same_auth.sign_in
            if same_auth and same_auth.sign_in
            else SignIn(settings.auth, login, fetch_json, clock, state.revoke)
        )
        self._storage = storage
        self._clock = clock
        same_metadata = kept("metadata_cache")
        self._metadata: MetadataCache = (
            same_metadata._metadata
            if same_metadata
            else MetadataCache(
                settings.metadata_cache.max_entries,
                settings.metadata_cache.ttl,
                settings.metadata_cache.negative_ttl,
                clock,
            )
        )
        self._sign_api = settings.sign_api
        self._redirect_cache_control = settings.s3.redirect_cache_control
        self._limits = settings.limits
        self._links_cache: LinkCache = (
            previous._links_cache if previous is not None else LinkCache()
        )
        # No route serves an entry older than the largest max_age: past it, it is garbage.
        longest = max(
            (route.settings.cache.max_age for route in config.routes if route.settings.cache),
            default=0.0,
        )
        same_objects = kept("object_cache")
        self._objects: ObjectCache = (
            same_objects._objects
            if same_objects is not None and same_objects._objects.max_age == longest
            else ObjectCache(
                settings.object_cache.max_bytes, settings.object_cache.max_entries, longest, clock
            )
        )
        telemetry.watch_cache("object", self._objects)
        telemetry.watch_cache("metadata", self._metadata)
        telemetry.watch_cache("link", self._links_cache)
        telemetry.watch_cache("token", self.verifier)
        link_secret = settings.auth.link_secret
        self._links = (
            LinkVerifier(link_secret.get_secret_value(), settings.auth.leeway, clock)
            if link_secret is not None
            else None
        )
        if previous is not None:
            # The state (revocations, rate buckets, stream slots held by streams still running
            # on the old handler) is the Gateway's and carries on; only its settings change.
            # (Last, so that nothing above can fail after the shared state was changed.)
            state.reconfigure(settings)

    async def handle(self, request: web.BaseRequest, record: AccessRecord) -> web.StreamResponse:
        if self.sign_in is not None and record.path in self.sign_in.paths:
            return await self.sign_in.answer(request, record)
        if self._metrics_path is not None and record.path == self._metrics_path:
            record.route = "metrics"
            await self._check_access(self._metrics_access, "metrics", request, record)
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed("metrics take GET", allowed="GET, HEAD")
            return web.Response(
                body=self._telemetry.render(),
                headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
            )
        if self._admin_access is not None and record.path == self._admin_path:
            record.route = "admin"
            await self._check_access(self._admin_access, "admin", request, record)
            return await answer_revocations(request, self._state, self._settings, self._clock)
        if self._sign_api.enabled and record.path == self._sign_api.path:
            record.route = "sign-api"
            record.delivery = "sign"
            preflight = _cors(request, record, self._sign_api.cors, ["POST"])
            if preflight is not None:
                return preflight
            await self._limit(request, "sign-api", self._limits.rate_limit, None)
            return await self._sign_batch(request, record)
        found = self._router.match(request.raw_path)
        if found is None:
            raise NotFound("no route matches")
        route = self._routes[found.index]
        settings = route.settings
        record.route = route.name
        record.delivery = settings.delivery
        preflight = _cors(request, record, settings.cors, list(settings.methods))
        if preflight is not None:
            return preflight
        if request.method not in settings.methods or request.method == "POST":
            # A route's POST is the sign API's presigned form uploads, never a request here.
            allowed = ", ".join(method for method in settings.methods if method != "POST")
            raise MethodNotAllowed(f"method {request.method[:16]} not allowed", allowed=allowed)
        rates = settings.rate_limit or self._limits.rate_limit
        try:
            claims, key = await self._admit(request, record, route, found.params)
        except ProxyError:
            # A refused request spends its client's tokens too (a flood of bad tokens is
            # limited like any other), and over the limit it is told 429.
            await self._limit(request, route.name, rates, None)
            raise
        # Both buckets in one call: with Redis, one round trip per request.
        await self._limit(request, route.name, rates, _subject_key(claims))
        if request.method == "PUT":
            return await self._upload(request, record, route, key, claims)
        return await self._deliver(request, record, route, key, claims)

    async def _admit(
        self,
        request: web.BaseRequest,
        record: AccessRecord,
        route: Route,
        params: dict[str, str],
    ) -> tuple[dict[str, Any] | None, str]:
        """Authenticate and authorize: the claims (None on a public route) and the key."""
        link = request.query.get(self._auth.link_param) if self._links else None
        if link and self._links is not None and route.rule.needs_token:
            # A share link is itself the authorization for exactly one object: checked after
            # routing, against the route that matched and the key it rendered.
            try:
                claims = self._links.verify(link, request.method)
            except Unauthenticated as exc:
                self._telemetry.token_checked("link", _rejected(exc))
                raise
            self._telemetry.token_checked("link", "valid")
            record.token_source = "share link"  # noqa: S105 - a label, not a secret
            record.sub = _subject(claims)
            self._state.check_token(claims, link=True)
            key = route.key.render(params, claims)
            self._links.check_target(claims, LinkTarget(route.name, route.settings.bucket, key))
            return claims, key
        if not route.rule.needs_token:
            return None, self._authorize(route, params, None)
        claims = await self._authenticate(request, record, route.sign_in)
        return claims, self._authorize(route, params, claims)

    async def _upload(
        self,
        request: web.BaseRequest,
        record: AccessRecord,
        route: Route,
        key: str,
        claims: dict[str, Any] | None,
    ) -> web.StreamResponse:
        """A PUT, authorized: 307 to a presigned PUT (redirect routes), or the body streamed
        to S3 (stream routes) holding one of the stream slots, as a download would."""
        target = upload_target(route, key, request.headers.get("Content-Type"))
        if route.settings.delivery == "redirect":
            return await redirect_put(
                request, self._storage, target, route.settings.ttl, self._clock(), _expiry(claims)
            )
        lease = await self._state.acquire_stream(request.remote or "unknown", _subject_key(claims))
        try:
            received = await receive(request, self._storage, target, self._limits.body_timeout)
        finally:
            await self._state.release_stream(lease)
        record.bytes_received = received.size
        self._metadata.forget(target.bucket, key)
        self._objects.forget(target.bucket, key)
        return web.json_response(
            {"path": record.path, "size": received.size, "etag": received.etag},
            status=201,
            headers={
                "ETag": received.etag,
                "Location": record.path,
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def _check_access(
        self, rule: Rule | None, what: str, request: web.BaseRequest, record: AccessRecord
    ) -> None:
        if rule is None:  # config refuses metrics or admin without their access rule
            raise Forbidden(f"{what}.access not configured")
        if not rule.needs_token:
            return
        claims = await self._authenticate(request, record)
        denial = rule.denial(claims, {})
        if denial is not None:
            raise Forbidden(denial)

    async def _limit(
        self,
        request: web.BaseRequest,
        scope: str,
        rates: RateLimitSettings,
        subject: str | None,
    ) -> None:
        group = _buckets(request, scope, rates, subject)
        if group:
            refusal = (await self._state.take([group]))[0]
            if refusal is not None:
                raise refusal

    async def _authenticate(
        self, request: web.BaseRequest, record: AccessRecord, sign_in: bool = False
    ) -> dict[str, Any]:
        """The token's claims, or 401; with `sign_in` (the route accepts sign-in sessions), a
        browser navigation is sent to sign in instead."""
        try:
            claims = await self._optional_claims(request, record)
            if claims is None:
                raise Unauthenticated("no token")
        except Unauthenticated as exc:
            redirect = self.sign_in.redirect(request, exc) if sign_in and self.sign_in else None
            if redirect is not None:
                raise redirect from None
            raise
        return claims

    async def _optional_claims(
        self, request: web.BaseRequest, record: AccessRecord
    ) -> dict[str, Any] | None:
        query = request.query if request.rel_url.raw_query_string else _NO_QUERY
        found = extract_token(self._auth, request.headers, None, query)
        if found is None:
            return None
        record.token_source, token = found
        try:
            claims = await self.verifier.verify(token)
        except Unauthenticated as exc:
            self._telemetry.token_checked("jwt", _rejected(exc))
            raise
        self._telemetry.token_checked("jwt", "valid")
        record.sub = _subject(claims)
        # After the verified-token cache, on every request: a cached token is still refused
        # once revoked.
        self._state.check_token(claims)
        return claims

    @staticmethod
    def _authorize(route: Route, params: dict[str, str], claims: dict[str, Any] | None) -> str:
        """Check the rule, then render the key; both before any S3 call."""
        if route.rule.needs_token:
            if claims is None:
                raise Unauthenticated("no token")
            if route.issuers is not None and claims.get("iss") not in route.issuers:
                # Another configured issuer's `sub: alice` is not this route's alice.
                raise Forbidden("token issuer not trusted by this route")
            denial = route.rule.denial(claims, params)
            if denial is not None:
                raise Forbidden(denial)
        return route.key.render(params, claims)

    async def _choose_delivery(self, route: Route, key: str) -> str:
        settings = route.settings
        if settings.delivery != "auto":
            return settings.delivery
        meta = self._metadata.get(settings.bucket, key)
        if meta is MISSING:
            raise NotFound("no such key (a recent HEAD said so)")
        if meta is None:
            try:
                meta = await self._storage.head(settings.bucket, key)
            except NotFound:
                self._metadata.put_missing(settings.bucket, key)
                raise
            self._metadata.put(settings.bucket, key, meta)
        return "stream" if meta.content_length < settings.stream_below else "redirect"

    async def _sign(
        self, route: Route, key: str, method: str, claims: dict[str, Any] | None
    ) -> SignedLink:
        settings = route.settings
        overrides = signed_overrides(route, key)
        if self._redirect_cache_control is not None:
            # Else S3's answer for a private file would be storable by shared caches.
            overrides.setdefault("Cache-Control", self._redirect_cache_control)
        return await sign_link(
            self._storage,
            settings,
            method,
            settings.bucket,
            key,
            overrides,
            self._clock(),
            _expiry(claims),
            self._links_cache,
        )

    async def _deliver(
        self,
        request: web.BaseRequest,
        record: AccessRecord,
        route: Route,
        key: str,
        claims: dict[str, Any] | None,
    ) -> web.StreamResponse:
        settings = route.settings
        delivery = await self._choose_delivery(route, key)
        if settings.delivery == "auto":
            record.delivery = f"auto:{delivery}"
        if delivery == "redirect":
            as_json = wants_json(request.headers.get("Accept"))
            # The JSON answer names a URL for fetch() to GET; HEAD gets the same answer, so a
            # HEAD's headers (Content-Length included) match its GET's.
            method = "GET" if as_json else request.method
            link = await self._sign(route, key, method, claims)
            return redirect_response(link, as_json, route.rule.needs_token)
        shown = presentation(route, key, record.cors)
        outcome = Outcome()
        lease = await self._state.acquire_stream(request.remote or "unknown", _subject_key(claims))
        try:
            response = await stream(
                request,
                self._storage,
                settings.bucket,
                key,
                shown,
                outcome,
                self._limits.client_write_timeout,
                self._objects,
                settings.cache,
                route.sse,
            )
        finally:
            await self._state.release_stream(lease)
        record.bytes_sent = outcome.bytes_sent
        record.first_byte = outcome.first_byte
        if outcome.aborted:
            record.reason = outcome.aborted
        return response

    async def _sign_batch(self, request: web.BaseRequest, record: AccessRecord) -> web.Response:
        """One request for a whole page of links (the N+1 problem): each path is authorized
        exactly as if it were requested with GET, and answered on its own."""
        if request.method != "POST":
            raise MethodNotAllowed("sign API takes POST", allowed="POST")
        if request.content_type != "application/json":
            # Also keeps this endpoint out of reach of cross-site HTML forms (no preflight).
            raise UnsupportedMediaType("sign API needs Content-Type: application/json")
        try:
            # A body trickled in a byte at a time must not hold the connection for ever.
            async with asyncio.timeout(self._limits.body_timeout):
                raw = await request.read()
        except TimeoutError:
            raise RequestTimeout("request body not received within limits.body_timeout") from None
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadRequest("sign API body is not JSON", detail="body is not JSON") from None
        paths = body.get("paths") if isinstance(body, dict) else None
        uploads = body.get("uploads") if isinstance(body, dict) else None
        if paths is None and isinstance(uploads, list):
            paths = []
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise BadRequest(
                "sign API without a list of paths", detail='expected {"paths": ["/path", ...]}'
            )
        if uploads is not None and not isinstance(uploads, list):
            raise BadRequest(
                "sign API uploads not a list",
                detail='expected {"uploads": [{"path": ..., "content_type": ..., "size": ...}]}',
            )
        if len(paths) + len(uploads or ()) > self._sign_api.max_paths:
            raise PayloadTooLarge(
                f"sign API batch of {len(paths) + len(uploads or ())} paths",
                detail=f"at most {self._sign_api.max_paths} paths per request",
            )
        claims = await self._optional_claims(request, record)
        # Admitted in order, before any S3 call: each path spends its route's rate-limit
        # tokens exactly as a GET would, so the first paths within the limit pass. All the
        # paths' buckets are spent in one call (one Redis round trip for the whole batch).
        checked = [self._admit_signing(request, path, claims) for path in paths]
        refusals = await self._state.take([group for _, group in checked])
        admitted = [refusal or found for (found, _), refusal in zip(checked, refusals, strict=True)]
        results = await self._sign_admitted(paths, admitted, claims)
        answer: dict[str, Any] = {"results": results}
        record.reason = f"{len(paths)} paths"
        if uploads is not None:
            answer["uploads"] = [
                await self._sign_upload(request, entry, claims) for entry in uploads
            ]
            record.reason += f", {len(uploads)} uploads"
        return web.json_response(
            answer, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        )

    async def _sign_upload(
        self, request: web.BaseRequest, entry: object, claims: dict[str, Any] | None
    ) -> dict[str, Any]:
        """One `uploads` entry: a presigned POST form, authorized as a PUT to its path would
        be, on a route that lists POST; or its refusal."""
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            return _refusal("", BadRequest(detail='each upload is {"path": "/path", ...}'))
        path, content_type, size = entry["path"], entry.get("content_type"), entry.get("size")
        admitted, buckets = self._admit_signing(request, path, claims, "POST")
        over_limit = (await self._state.take([buckets]))[0]
        if over_limit is not None:
            return _refusal(path, over_limit)
        if isinstance(admitted, ProxyError):
            return _refusal(path, admitted)
        route, key = admitted
        try:
            if not isinstance(content_type, str):
                raise UnsupportedMediaType(detail="content_type required")
            if size is not None and (not isinstance(size, int) or size < 0):
                raise BadRequest(detail="size is a byte count")
            target = upload_target(route, key, content_type)
            form = await post_form(
                self._storage, target, size, route.settings.ttl, self._clock(), _expiry(claims)
            )
        except ProxyError as exc:
            return _refusal(path, exc)
        return {"path": path, **form}

    def _admit_signing(
        self,
        request: web.BaseRequest,
        path: str,
        claims: dict[str, Any] | None,
        method: str = "GET",
    ) -> tuple[tuple[Route, str] | ProxyError, list[Bucket]]:
        """Route and authorize one path of a batch as its GET (or, for an upload form, its
        POST) would be: the route and key, or the refusal; and the rate-limit buckets that
        request would spend (a 429 from those takes precedence over an authorization refusal,
        as on a GET)."""
        try:
            found = self._router.match(path) if path.startswith("/") else None
            if found is None:
                raise NotFound("no route matches")
            route = self._routes[found.index]
            if method not in route.settings.methods:
                raise MethodNotAllowed(f"route does not allow {method}")
        except ProxyError as exc:
            return exc, []
        rates = route.settings.rate_limit or self._limits.rate_limit
        try:
            key = self._authorize(route, found.params, claims)
        except ProxyError as exc:
            return exc, _buckets(request, route.name, rates, None)
        return (route, key), _buckets(request, route.name, rates, _subject_key(claims))

    async def _sign_admitted(
        self,
        paths: list[str],
        admitted: list[tuple[Route, str] | ProxyError],
        claims: dict[str, Any] | None,
    ) -> list[dict[str, Any]]:
        """Answers in the order of `paths`. Paths on `auto` routes may need a HEAD: those run
        concurrently, at most _SIGN_LOOKUPS at once; the others need no S3 call and are
        signed inline (a task each would add half again to a large batch's CPU cost)."""
        lookups = asyncio.Semaphore(_SIGN_LOOKUPS)
        looked_up = [
            index
            for index, found in enumerate(admitted)
            if not isinstance(found, ProxyError) and found[0].settings.delivery == "auto"
        ]
        answers = await asyncio.gather(
            *(self._sign_one(paths[i], admitted[i], claims, lookups) for i in looked_up)
        )
        results = dict(zip(looked_up, answers, strict=True))
        for index, found in enumerate(admitted):
            if index not in results:
                results[index] = await self._sign_one(paths[index], found, claims, lookups)
        return [results[index] for index in range(len(paths))]

    async def _sign_one(
        self,
        path: str,
        admitted: tuple[Route, str] | ProxyError,
        claims: dict[str, Any] | None,
        lookups: asyncio.Semaphore,
    ) -> dict[str, Any]:
        if isinstance(admitted, ProxyError):
            return _refusal(path, admitted)
        route, key = admitted
        try:
            async with lookups:
                delivery = await self._choose_delivery(route, key)
            if delivery == "stream":
                # Streamed objects are fetched from the proxy itself, with the caller's token.
                return {"path": path, "url": path, "expires_at": None}
            link = await self._sign(route, key, "GET", claims)
            return {"path": path, "url": link.url, "expires_at": link.expires_at_iso}
        except ProxyError as exc:
            return _refusal(path, exc)


def _refusal(path: str, exc: ProxyError) -> dict[str, Any]:
    """One path's refusal in a sign API answer: its own status, as its GET would have had."""
    refused: dict[str, Any] = {"path": path, "status": exc.status, "error": exc.detail}
    if "Retry-After" in exc.headers:
        refused["retry_after"] = int(exc.headers["Retry-After"])
    return refused


# Metadata lookups (S3 HEADs for `delivery: auto`) one sign API request runs at once: enough
# that a page of links is not signed one round trip at a time, few enough that one request
# cannot take a large share of s3.max_connections.
_SIGN_LOOKUPS = 8


_NO_QUERY: dict[str, str] = {}


def _rejected(exc: Unauthenticated) -> str:
    """The outcome label of a refused credential: a fixed value, never the reason's text."""
    return "expired" if exc.reason == "token expired" else "invalid"


def _expiry(claims: Mapping[str, Any] | None) -> float | None:
    """The token's `exp`, if it has a numeric one: nothing signed may outlive it."""
    exp = (claims or {}).get("exp")
    return exp if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _subject(claims: dict[str, Any]) -> str | None:
    """`sub` as the access log records it (cut at 256 characters)."""
    sub = claims.get("sub")
    return str(sub)[:256] if sub is not None else None


def _buckets(
    request: web.BaseRequest, scope: str, rates: RateLimitSettings, subject: str | None
) -> list[Bucket]:
    """The rate-limit buckets one request spends, client first."""
    group = []
    if rates.per_client is not None:
        group.append(
            Bucket((scope, "client", request.remote or "unknown"), rates.per_client, "client")
        )
    if rates.per_subject is not None and subject is not None:
        group.append(Bucket((scope, "sub", subject), rates.per_subject, "subject"))
    return group


def _subject_key(claims: Mapping[str, Any] | None) -> str | None:
    """Whom per-subject limits count: the whole `sub`, of one issuer. Another issuer's
    alice, a share link's subject, or a `sub` sharing the log's first 256 characters is
    someone else, and cannot spend this one's rate or streams."""
    if claims is None or claims.get("sub") is None:
        return None
    kind = "link" if claims.get("aud") == LINK_AUDIENCE else "token"
    return f"{kind}\n{claims.get('iss', '')}\n{claims['sub']}"


def _cors(
    request: web.BaseRequest,
    record: AccessRecord,
    settings: CorsSettings | None,
    methods: list[str],
) -> web.Response | None:
    """Answer a CORS preflight, or note the CORS headers every later response must carry."""
    if settings is None:
        return None
    origin = request.headers.get("Origin")
    requested = request.headers.get("Access-Control-Request-Method")
    if request.method == "OPTIONS" and requested is not None:
        headers = preflight_headers(settings, origin, methods, requested)
        if headers is None:
            raise Forbidden("CORS preflight refused", detail="origin or method not allowed")
        return web.Response(status=204, headers=headers)
    record.cors = response_headers(settings, origin)
    return None
