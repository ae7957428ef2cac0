"""create_app(): the aiohttp application, its middleware and the one request handler.

One request flows one way: match -> authenticate -> authorize -> deliver. S3 is not touched
before authorization succeeds, so an unauthorized caller learns nothing about which keys exist.
Errors become responses in exactly one place (`_errors_to_responses`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from .accesslog import AccessRecord
from .auth import Clock, TokenVerifier, extract_token, parse_cookie_header
from .config import Config, Route
from .delivery import Outcome, content_disposition, redirect, stream
from .errors import Forbidden, MethodNotAllowed, NotFound, NotModified, ProxyError, Unauthenticated
from .routing import Router
from .storage import S3Storage, Storage

log = logging.getLogger("proxy")

CONFIG = web.AppKey("config", Config)
STORAGE = web.AppKey("storage", Storage)
_RECORD = web.RequestKey("access_record", AccessRecord)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    config: Config, storage: Storage | None = None, clock: Clock = time.time
) -> web.Application:
    """Build the app. Without `storage`, one S3 client is opened at start-up and closed at exit."""
    app = web.Application(middlewares=[_access_log(clock), _errors_to_responses])
    app[CONFIG] = config
    if storage is None:
        s3 = S3Storage(config.settings.s3)
        app[STORAGE] = s3
        app.cleanup_ctx.append(_storage_lifecycle(s3))
    else:
        app[STORAGE] = storage
    # The proxy routes by itself on the raw path; aiohttp's router only has to hand everything
    # over (including decoded control characters, hence [\s\S] rather than .).
    app.router.add_route("*", r"/{tail:[\s\S]*}", _Handler(config, app[STORAGE], clock).handle)
    return app


def _storage_lifecycle(
    s3: S3Storage,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await s3.open()
        yield
        await s3.close()

    return lifecycle


def _access_log(clock: Clock) -> Any:
    @web.middleware
    async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        record = AccessRecord(
            method=request.method,
            path=request.raw_path.split("?", 1)[0][:2048],
            client=request.remote,
        )
        request[_RECORD] = record
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            return response
        finally:
            if response is not None:
                record.status = response.status
                if not response.prepared and request.method != "HEAD":
                    record.bytes_sent = response.content_length or 0
            elif not record.status:
                record.status = 500
            record.emit(clock(), time.perf_counter() - started)

    return access_log


@web.middleware
async def _errors_to_responses(request: web.Request, handler: Handler) -> web.StreamResponse:
    record: AccessRecord = request[_RECORD]
    try:
        return await handler(request)
    except NotModified as exc:
        return web.Response(status=304, headers=exc.headers)
    except ProxyError as exc:
        record.reason = exc.reason
        return _error_response(exc.status, exc.detail, exc.headers)
    except web.HTTPException as exc:
        # aiohttp's own refusals: keep the status, use the proxy's body format.
        record.reason = exc.reason
        return _error_response(exc.status, exc.reason.lower(), {})
    except Exception:
        log.exception("unhandled error for %s %s", request.method, record.path)
        record.reason = "internal error"
        return _error_response(500, "internal error", {})


def _error_response(status: int, detail: str, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"error": detail}).encode(),
        content_type="application/json",
        headers={**headers, "Cache-Control": "no-store"},
    )


class _Handler:
    def __init__(self, config: Config, storage: Storage, clock: Clock) -> None:
        self._routes = config.routes
        self._router = Router([route.pattern for route in config.routes])
        self._auth = config.settings.auth
        self._verifier = TokenVerifier(config.settings.auth, clock)
        self._storage = storage

    async def handle(self, request: web.Request) -> web.StreamResponse:
        record: AccessRecord = request[_RECORD]
        found = self._router.match(request.raw_path)
        if found is None:
            raise NotFound("no route matches")
        route = self._routes[found.index]
        settings = route.settings
        record.route = route.name
        record.delivery = settings.delivery
        if request.method not in settings.methods:
            raise MethodNotAllowed(
                f"method {request.method[:16]} not allowed", allowed=", ".join(settings.methods)
            )

        claims = self._authenticate(request, route, record)
        denial = route.rule.denial(claims or {}, found.params) if claims is not None else None
        if denial is not None:
            raise Forbidden(denial)
        key = route.key.render(found.params, claims)
        return await self._deliver(request, route, key)

    def _authenticate(
        self, request: web.Request, route: Route, record: AccessRecord
    ) -> dict[str, Any] | None:
        if not route.rule.needs_token:
            return None
        found = extract_token(
            self._auth,
            request.headers,
            parse_cookie_header(request.headers.get("Cookie")),
            request.query,
        )
        if found is None:
            raise Unauthenticated("no token")
        record.token_source, token = found
        claims = self._verifier.verify(token)
        sub = claims.get("sub")
        record.sub = str(sub)[:256] if sub is not None else None
        return claims

    async def _deliver(self, request: web.Request, route: Route, key: str) -> web.StreamResponse:
        settings = route.settings
        overrides: dict[str, str] = {}
        if settings.disposition:
            overrides["Content-Disposition"] = content_disposition(settings.disposition, key)
        if settings.content_type:
            overrides["Content-Type"] = settings.content_type
        if settings.cache_control:
            overrides["Cache-Control"] = settings.cache_control
        if settings.delivery == "redirect":
            return await redirect(
                request, self._storage, settings.bucket, key, settings.ttl, overrides
            )
        overrides.setdefault("Cache-Control", "private, no-cache")
        outcome = Outcome()
        response = await stream(request, self._storage, settings.bucket, key, overrides, outcome)
        record = request[_RECORD]
        record.bytes_sent = outcome.bytes_sent
        if outcome.aborted:
            record.reason = outcome.aborted
        return response
