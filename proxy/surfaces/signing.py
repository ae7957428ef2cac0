"""The sign API (`POST sign_api.path`): one request for a whole page of links and upload forms
(the N+1 problem). Each path is routed, authorized and rate-limited exactly as its own GET
(or, for an upload form, its POST) would be, and answered on its own: a URL, or the refusal
with the status that request would have had.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from ..auth import Clock
from ..config import Config, Route
from ..errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
    UnsupportedMediaType,
)
from ..request import ObjectRef, RequestContext
from ..routing import Router
from ..state import Bucket, State
from ..storage import Storage
from ..uploads import post_form, upload_target
from .access import Access, Claims, answer_cors, authorize, buckets
from .downloads import Downloads
from .uploads import absence_check_slot

# Metadata lookups (S3 HEADs for `delivery: auto`) one sign API request runs at once: enough
# that a page of links is not signed one round trip at a time, few enough that one request
# cannot take a large share of s3.max_connections.
_SIGN_LOOKUPS = 8

Admitted = tuple[Route, ObjectRef] | ProxyError


class Signing:
    def __init__(
        self,
        config: Config,
        router: Router,
        storage: Storage,
        clock: Clock,
        state: State,
        access: Access,
        downloads: Downloads,
    ) -> None:
        self._settings = config.settings.sign_api
        self._routes = config.routes
        self._router = router
        self._storage = storage
        self._clock = clock
        self._state = state
        self._access = access
        self._downloads = downloads

    async def answer(self, request: web.BaseRequest, context: RequestContext) -> web.Response:
        context.route = "sign-api"
        context.delivery = "sign"
        preflight = answer_cors(request, context, self._settings.cors, ["POST"])
        if preflight is not None:
            return preflight
        await self._access.limit(context, "sign-api", self._access.limits.rate_limit, None)
        return await self._sign_batch(request, context)

    async def _sign_batch(self, request: web.BaseRequest, context: RequestContext) -> web.Response:
        if request.method != "POST":
            raise MethodNotAllowed("sign API takes POST", allowed="POST")
        if request.content_type != "application/json":
            # Also keeps this endpoint out of reach of cross-site HTML forms (no preflight).
            raise UnsupportedMediaType("sign API needs Content-Type: application/json")
        try:
            # A body trickled in a byte at a time must not hold the connection for ever.
            async with asyncio.timeout(self._access.limits.body_timeout):
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
        if len(paths) + len(uploads or ()) > self._settings.max_paths:
            raise PayloadTooLarge(
                f"sign API batch of {len(paths) + len(uploads or ())} paths",
                detail=f"at most {self._settings.max_paths} paths per request",
            )
        claims = await self._access.optional_claims(request, context)
        # Admitted in order, before any S3 call: each path spends its route's rate-limit
        # tokens exactly as a GET would, so the first paths within the limit pass. All the
        # paths' buckets are spent in one call (one Redis round trip for the whole batch).
        checked = [self._admit(context, path, claims) for path in paths]
        refusals = await self._state.take([group for _, group in checked])
        admitted = [refusal or found for (found, _), refusal in zip(checked, refusals, strict=True)]
        results = await self._sign_admitted(context, paths, admitted)
        answer: dict[str, Any] = {"results": results}
        context.reason = f"{len(paths)} paths"
        if uploads is not None:
            answer["uploads"] = [
                await self._sign_upload(context, entry, claims) for entry in uploads
            ]
            context.reason += f", {len(uploads)} uploads"
        return web.json_response(
            answer, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        )

    async def _sign_upload(
        self, context: RequestContext, entry: object, claims: Claims | None
    ) -> dict[str, Any]:
        """One `uploads` entry: a presigned POST form, authorized as a PUT to its path would
        be, on a route that lists POST; or its refusal."""
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            return _refusal("", BadRequest(detail='each upload is {"path": "/path", ...}'))
        path, content_type, size = entry["path"], entry.get("content_type"), entry.get("size")
        admitted, group = self._admit(context, path, claims, "POST")
        over_limit = (await self._state.take([group]))[0]
        if over_limit is not None:
            return _refusal(path, over_limit)
        if isinstance(admitted, ProxyError):
            return _refusal(path, admitted)
        route, ref = admitted
        try:
            if not isinstance(content_type, str):
                raise UnsupportedMediaType(detail="content_type required")
            if size is not None and (not isinstance(size, int) or size < 0):
                raise BadRequest(detail="size is a byte count")
            target = upload_target(route, ref, content_type)
            async with absence_check_slot(self._state, context, target):
                form = await post_form(
                    self._storage,
                    target,
                    size,
                    route.settings.ttl,
                    self._clock(),
                    context.expires_at,
                )
        except ProxyError as exc:
            return _refusal(path, exc)
        return {"path": path, **form}

    def _admit(
        self,
        context: RequestContext,
        path: str,
        claims: Claims | None,
        method: str = "GET",
    ) -> tuple[Admitted, list[Bucket]]:
        """Route and authorize one path of a batch as its GET (or, for an upload form, its
        POST) would be: the route and object, or the refusal; and the rate-limit buckets that
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
        rates = route.settings.rate_limit or self._access.limits.rate_limit
        try:
            ref = authorize(route, found.params, claims)
        except ProxyError as exc:
            return exc, buckets(context, route.name, rates, None)
        return (route, ref), buckets(context, route.name, rates, context.subject_key)

    async def _sign_admitted(
        self, context: RequestContext, paths: list[str], admitted: list[Admitted]
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
            *(self._sign_one(context, paths[i], admitted[i], lookups) for i in looked_up)
        )
        results = dict(zip(looked_up, answers, strict=True))
        for index, found in enumerate(admitted):
            if index not in results:
                results[index] = await self._sign_one(context, paths[index], found, lookups)
        return [results[index] for index in range(len(paths))]

    async def _sign_one(
        self,
        context: RequestContext,
        path: str,
        admitted: Admitted,
        lookups: asyncio.Semaphore,
    ) -> dict[str, Any]:
        if isinstance(admitted, ProxyError):
            return _refusal(path, admitted)
        route, ref = admitted
        try:
            async with lookups:
                delivery = await self._downloads.choose_delivery(route, ref, context)
            link = await self._downloads.method(delivery).link(context, route, ref, path)
        except ProxyError as exc:
            return _refusal(path, exc)
        return {"path": path, "url": link.url, "expires_at": link.expires_at}


def _refusal(path: str, exc: ProxyError) -> dict[str, Any]:
    """One path's refusal in a sign API answer: its own status, as its GET would have had."""
    refused: dict[str, Any] = {"path": path, "status": exc.status, "error": exc.detail}
    if "Retry-After" in exc.headers:
        refused["retry_after"] = int(exc.headers["Retry-After"])
    return refused
