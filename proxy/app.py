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
from typing import Protocol

from aiohttp import web

from .accesslog import write_access_line
from .audit import AuditTrail, this_worker, write_request_events
from .auth import Clock, TokenVerifier
from .config import Config
from .cors import add_headers
from .edge import edge_refusal, via_trusted_proxy
from .engines import create_engine
from .errors import (
    MethodNotAllowed,
    NotFound,
    NotModified,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
)
from .jwks import HttpJson
from .limits import TooManyRequests
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
from .request import RequestContext, new_request_id, request_id
from .routing import Router
from .state import State, create_state
from .state.admin import answer_revocations
from .storage import Storage
from .surfaces import Access, Downloads, Signing, Uploads, answer_cors
from .wire import WireHead, WireResponse

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
        # The audit trail: opened once with the Gateway (audit.* is restart-only).
        audit = config.settings.audit
        self.audit: AuditTrail | None = (
            AuditTrail(audit.path, audit.max_bytes, this_worker(), clock)
            if audit.path is not None
            else None
        )
        self.streams = self.state.streams
        surfaces = self._surfaces = _Surfaces(
            config, self._storage, clock, self._http_json, telemetry, self.state
        )
        telemetry.watch_streams(lambda: self.streams.in_use)
        telemetry.watch_requests(lambda: self.in_flight)
        telemetry.watch_state(self.state)
        self._pages: dict[str, Page] = {}
        self._set_probes(config, surfaces)

    def _set_probes(self, config: Config, surfaces: _Surfaces) -> None:
        health = config.settings.health
        self.readiness = Readiness(
            _readiness_checks(config, self._storage, surfaces.access.verifier, self.state),
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
        """Serve new requests with `config`. A request in flight finishes on the surfaces it
        started with (it holds a reference to them; the old ones are freed after the last
        one). If building the new surfaces raises, the old ones stay in place."""
        surfaces = _Surfaces(
            config,
            self._storage,
            self._clock,
            self._http_json,
            self.telemetry,
            self.state,
            self._surfaces,
        )
        self._surfaces, self.config = surfaces, config
        self._set_probes(config, surfaces)  # the buckets to check may have changed

    def _count_reload(self, outcome: str) -> None:
        self.telemetry.config_reloaded(outcome == "ok")

    def add_pages(self, pages: Mapping[str, Page]) -> None:
        """Answer these exact paths (GET/HEAD) before any route: the demo's own pages."""
        self._pages.update(pages)

    async def open(self) -> None:
        if self.audit is not None:
            self.audit.open()  # first: without its audit trail the proxy does not serve
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
        if self.audit is not None:
            self.audit.close()

    def reopen_audit(self) -> None:
        """SIGHUP: follow an audit file that logrotate moved away (trail.py rule 3)."""
        if self.audit is not None:
            self.audit.reopen()

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
        context = RequestContext(
            request.method,
            path,
            request.remote,
            started,
            # (A client's own X-Request-Id is never used: not even read unless a trusted
            # proxy sent the request.)
            request_id(request.headers.get("X-Request-Id"), True)
            if via_trusted_proxy(request)
            else new_request_id(),
        )
        if self.audit is not None:
            context.audited = True  # (set here, not by keyword: a keyword costs more)
        refusal = edge_refusal(request)
        try:
            if refusal is not None:
                raise refusal
            page = self._pages.get(path) if self._pages else None
            if page is not None:
                context.route = "page"
                if request.method not in ("GET", "HEAD"):
                    raise MethodNotAllowed("pages take GET", allowed="GET, HEAD")
                response = await page(request)
            else:
                # Read once: a reload during this request does not change its surfaces.
                response = await self._surfaces.answer(request, context)
        except NotModified as exc:
            response = _not_modified(exc.headers)
        except ProxyError as exc:
            context.reason = exc.reason
            if isinstance(exc, TooManyRequests):
                self.telemetry.rate_limited(context.route, _LIMITS.get(exc.reason, "other"))
            response = _error_response(exc.status, exc.detail, exc.headers)
            if isinstance(exc, RequestTimeout | PayloadTooLarge):
                response.force_close()  # the rest of a trickled or oversized body is unwanted
        except ConnectionError:
            # The client went away while we answered: nothing to send, and not our error. (Or
            # the proxy closed it, a revoked credential's stream, and said why already.)
            context.reason = context.reason or "client disconnected"
            response = web.Response(status=499)  # nginx's "client closed request", for the log
        except web.HTTPException as exc:
            # aiohttp's own refusals: keep the status, use the proxy's body format.
            context.reason = exc.reason
            response = _error_response(exc.status, exc.reason.lower(), {})
        except Exception:
            log.exception("unhandled error for %s %s", request.method, context.path)
            context.reason = "internal error"
            response = _error_response(500, "internal error", {})
        finally:
            self.in_flight -= 1
        context.status = response.status
        if not response.prepared:
            # (A streamed answer was given it before it started: delivery/stream.py.)
            if isinstance(response, WireResponse):
                response.request_id = context.id
                # Its head was built with the request's CORS fields, unless it says otherwise.
                if context.cors and response.cors is not context.cors:
                    add_headers(response.headers, context.cors)
            else:
                response.headers["X-Request-Id"] = context.id
                if context.cors:
                    add_headers(response.headers, context.cors)
            if request.method != "HEAD":
                context.bytes_sent = response.content_length or 0
        ended = time.perf_counter()
        self.telemetry.observe_request(
            context.route,
            context.delivery,
            context.method,
            context.status,
            context.bytes_sent,
            ended - started,
            (context.first_byte or ended) - started,
        )
        write_access_line(context, self._clock(), ended - started)
        if self.audit is not None:
            write_request_events(self.audit, context)
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
        # Read once: a reload during this probe does not change the rule it is judged by.
        surfaces, rule = self._surfaces, self.config.admin_access
        detailed = await surfaces.access.passes(rule, request)
        return await ready_response(self.readiness, self.draining, detailed)


# TooManyRequests reasons (limits.py) -> the `limit` label of proxy_rate_limited_total.
_LIMITS = {"rate limit per client": "client", "rate limit per subject": "subject"}


def _readiness_checks(
    config: Config, storage: Storage, verifier: TokenVerifier, state: State
) -> list[Check]:
    checks = storage_checks(storage, [route.settings.bucket for route in config.routes])
    if config.settings.state.backend == "redis":
        # Redis unreachable past state.outage_grace: tokens are refused (by default), so this
        # process is not ready. Inside the grace it serves: ready, with a "degraded" note.
        checks.append(Check("redis", state.check, state.degraded))

    async def key_sets() -> str | None:
        missing = await verifier.missing_key_sets()
        return f"no keys loaded from {', '.join(missing)}" if missing else None

    if any(issuer.jwks_url for issuer in config.settings.auth.issuer_list()):
        checks.append(Check("jwks", key_sets))
    return checks


class _Resource(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...


def _error_response(status: int, detail: str, headers: dict[str, str]) -> web.StreamResponse:
    """A refusal's JSON answer. Refusals repeat (a flood of bad tokens is all 401s): its
    head is kept per status and extra fields, its body per detail (wire.py)."""
    body = _ERROR_BODIES.get(detail)
    if body is None:
        body = json.dumps({"error": detail}).encode()
        if len(_ERROR_BODIES) >= _ERRORS_KEPT:
            _ERROR_BODIES.clear()  # bounded: details are few, unless a message varies
        _ERROR_BODIES[detail] = body
    key = (status, *headers.items())
    head = _ERROR_HEADS.get(key)
    if head is None:
        fields = {**headers, "Content-Type": "application/json", **_REFUSAL_FIELDS}
        try:
            head = WireHead(fields)
        except ValueError:
            # A field wire.py refuses: answered as before, so the access line is written
            # and aiohttp refuses the head when it is sent (a plain 500).
            return web.Response(status=status, body=body, headers=fields)
        if len(_ERROR_HEADS) >= _ERRORS_KEPT:
            _ERROR_HEADS.clear()  # bounded: e.g. Retry-After values vary
        _ERROR_HEADS[key] = head
    return WireResponse(status, head, len(body), body)


def _not_modified(headers: dict[str, str]) -> web.StreamResponse:
    """The 304 with the fields a cache updates from it (delivery/stream.py chose them), and
    Age when it came from the object cache. Browsers revalidate a `no-cache` object on every
    view, so its head is kept per fields, as a refusal's is."""
    age = headers.pop("Age", None)
    key = (304, *headers.items())
    head = _ERROR_HEADS.get(key)
    if head is None:
        try:
            head = WireHead(headers)
        except ValueError:  # as for a refusal: answered as before
            return web.Response(status=304, headers={**headers, **({"Age": age} if age else {})})
        if len(_ERROR_HEADS) >= _ERRORS_KEPT:
            _ERROR_HEADS.clear()
        _ERROR_HEADS[key] = head
    response = WireResponse(304, head, 0)
    if age is not None:
        response.age = int(age)
    return response


_REFUSAL_FIELDS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_ERROR_BODIES: dict[str, bytes] = {}
_ERROR_HEADS: dict[tuple[object, ...], WireHead] = {}
_ERRORS_KEPT = 1024


class _Surfaces:
    """One config's surfaces, and which of them answers a path. A reload builds a new one
    from the old (`previous`), which keeps whatever state no changed setting touches."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        clock: Clock,
        fetch_json: HttpJson,
        telemetry: Telemetry,
        state: State,
        previous: _Surfaces | None = None,
    ) -> None:
        settings = self._settings = config.settings
        self._telemetry = telemetry
        self._state = state
        self._clock = clock
        metrics = settings.metrics
        self._metrics_path = metrics.path if metrics.enabled and metrics.on_main_port else None
        self._metrics_access = config.metrics_access
        self._admin_path = settings.admin.path
        self._admin_access = config.admin_access
        self._sign_api = settings.sign_api.path if settings.sign_api.enabled else None
        self._routes = config.routes
        router = self._router = Router([route.pattern for route in config.routes])
        self.downloads: Downloads = Downloads(
            config,
            storage,
            clock,
            state,
            telemetry,
            previous.downloads if previous is not None else None,
        )
        self.access: Access = Access(
            config,
            clock,
            fetch_json,
            telemetry,
            state,
            previous.access if previous is not None else None,
        )
        telemetry.watch_cache("token", self.access.verifier)
        self._uploads = Uploads(config, storage, clock, state, self.downloads.forget, telemetry)
        self._signing = Signing(
            config, router, storage, clock, state, self.access, self.downloads, telemetry
        )
        if previous is not None:
            # The state (revocations, rate buckets, stream slots held by streams still running
            # on the old surfaces) is the Gateway's and carries on; only its settings change.
            # (Last, so that nothing above can fail after the shared state was changed.)
            state.reconfigure(settings)

    async def answer(self, request: web.BaseRequest, context: RequestContext) -> web.StreamResponse:
        """Choose the surface for the path, and let it answer."""
        path = context.path
        sign_in = self.access.sign_in
        if sign_in is not None and path in sign_in.paths:
            return await sign_in.answer(request, context)
        if self._metrics_path is not None and path == self._metrics_path:
            context.route = "metrics"
            await self.access.check_access(self._metrics_access, "metrics", request, context)
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed("metrics take GET", allowed="GET, HEAD")
            return web.Response(
                body=self._telemetry.render(),
                headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
            )
        if self._admin_access is not None and path == self._admin_path:
            context.route = "admin"
            await self.access.check_access(self._admin_access, "admin", request, context)
            return await answer_revocations(
                request, context, self._state, self._settings, self._clock
            )
        if path == self._sign_api:
            return await self._signing.answer(request, context)
        return await self._answer_route(request, context)

    async def _answer_route(
        self, request: web.BaseRequest, context: RequestContext
    ) -> web.StreamResponse:
        found = self._router.match(request.raw_path)
        if found is None:
            raise NotFound("no route matches")
        route = self._routes[found.index]
        settings = route.settings
        context.route = route.name
        context.delivery = settings.delivery
        if settings.cors is not None:
            preflight = answer_cors(request, context, settings.cors, list(settings.methods))
            if preflight is not None:
                return preflight
        if request.method not in settings.methods or request.method == "POST":
            # A route's POST is the sign API's presigned form uploads, never a request here.
            allowed = ", ".join(method for method in settings.methods if method != "POST")
            raise MethodNotAllowed(f"method {request.method[:16]} not allowed", allowed=allowed)
        ref = await self.access.admit(request, context, route, found.params)
        if request.method == "PUT":
            return await self._uploads.answer(request, context, route, ref)
        return await self.downloads.answer(request, context, route, ref)
