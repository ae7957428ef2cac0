"""The sign API (`POST sign_api.path`): one request for a whole page of links and upload forms
(the N+1 problem). Each path is routed, authorized and rate-limited exactly as its own GET
(or, for an upload form, its POST) would be, and answered on its own: a URL, or the refusal
with the status that request would have had.

Rule: a batch costs S3 no more than its distinct objects. A request holds at most
`sign_api.max_paths` entries, of which at most `max_uploads` upload forms (413 past either);
every entry spends its route's rate limits (all of them in one call); each object is asked
about once however many entries name it (a metadata HEAD for `auto` routes, an absence check
for `overwrite: false` uploads), at most _SIGN_LOOKUPS at once, each holding one of the
caller's slots (limits.max_streams_per_*).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
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
from ..uploads import UploadTarget, check_absent, check_size, post_form, upload_target
from .access import Access, Claims, answer_cors, authorize, buckets
from .downloads import Downloads
from .uploads import absence_check_slot

# S3 lookups (metadata HEADs for `delivery: auto`, upload absence checks) one sign API
# request runs at once: enough that a page of links is not signed one round trip at a time,
# few enough that one request cannot take a large share of s3.max_connections.
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
        if uploads is not None and len(uploads) > self._settings.max_uploads:
            raise PayloadTooLarge(
                f"sign API batch of {len(uploads)} uploads",
                detail=f"at most {self._settings.max_uploads} uploads per request",
            )
        claims = await self._access.optional_claims(request, context)
        # Admitted in order, before any S3 call: each path spends its route's rate-limit
        # tokens exactly as a GET would (an upload form as its POST), so the first entries
        # within the limit pass. All the buckets are spent in one call (one Redis round trip
        # for the whole batch).
        checked = [self._admit(context, path, claims) for path in paths]
        forms = [self._admit_upload(context, entry, claims) for entry in uploads or ()]
        refusals = await self._state.take(
            [group for _, group in checked] + [form.group for form in forms]
        )
        path_refusals, over_limit = refusals[: len(paths)], refusals[len(paths) :]
        admitted = [
            refusal or found for (found, _), refusal in zip(checked, path_refusals, strict=True)
        ]
        lookups = _Lookups(context, self._state, self._storage, self._downloads)
        results = await self._sign_admitted(context, paths, admitted, lookups)
        answer: dict[str, Any] = {"results": results}
        context.reason = f"{len(paths)} paths"
        if uploads is not None:
            answer["uploads"] = await asyncio.gather(
                *(
                    self._sign_upload(context, form, refusal, lookups)
                    for form, refusal in zip(forms, over_limit, strict=True)
                )
            )
            context.reason += f", {len(uploads)} uploads"
        return web.json_response(
            answer, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        )

    def _admit_upload(self, context: RequestContext, entry: object, claims: Claims | None) -> _Form:
        """One `uploads` entry, admitted as a POST to its path would be, on a route that
        lists POST: its route, target and size, or its refusal; and the buckets it spends."""
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            return _Form("", BadRequest(detail='each upload is {"path": "/path", ...}'), [])
        path, content_type, size = entry["path"], entry.get("content_type"), entry.get("size")
        admitted, group = self._admit(context, path, claims, "POST")
        if isinstance(admitted, ProxyError):
            return _Form(path, admitted, group)
        route, ref = admitted
        try:
            if not isinstance(content_type, str):
                raise UnsupportedMediaType(detail="content_type required")
            if size is not None and (not isinstance(size, int) or size < 0):
                raise BadRequest(detail="size is a byte count")
            target = upload_target(route, ref, content_type)
            check_size(target.settings, size)
        except ProxyError as exc:
            return _Form(path, exc, group)
        return _Form(path, (route, target, size), group)

    async def _sign_upload(
        self,
        context: RequestContext,
        form: _Form,
        over_limit: ProxyError | None,
        lookups: _Lookups,
    ) -> dict[str, Any]:
        """One upload entry's answer: a presigned POST form, or its refusal (a 429 from its
        buckets first, as on a POST)."""
        if over_limit is not None:
            return _refusal(form.path, over_limit)
        if isinstance(form.admitted, ProxyError):
            return _refusal(form.path, form.admitted)
        route, target, size = form.admitted
        try:
            await lookups.absent(target)
            signed = await post_form(
                self._storage, target, size, route.settings.ttl, self._clock(), context.expires_at
            )
        except ProxyError as exc:
            return _refusal(form.path, exc)
        return {"path": form.path, **signed}

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
        self,
        context: RequestContext,
        paths: list[str],
        admitted: list[Admitted],
        lookups: _Lookups,
    ) -> list[dict[str, Any]]:
        """Answers in the order of `paths`. Paths on `auto` routes may need a HEAD: those run
        concurrently (through `lookups`); the others need no S3 call and are signed inline (a
        task each would add half again to a large batch's CPU cost)."""
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
        lookups: _Lookups,
    ) -> dict[str, Any]:
        if isinstance(admitted, ProxyError):
            return _refusal(path, admitted)
        route, ref = admitted
        try:
            delivery = await lookups.delivery(route, ref)
            link = await self._downloads.method(delivery).link(context, route, ref, path)
        except ProxyError as exc:
            return _refusal(path, exc)
        return {"path": path, "url": link.url, "expires_at": link.expires_at}


@dataclass(frozen=True, slots=True)
class _Form:
    """One `uploads` entry once admitted: its route, target and declared size, or why not;
    and the rate-limit buckets it spends."""

    path: str
    admitted: tuple[Route, UploadTarget, int | None] | ProxyError
    group: list[Bucket]


class _Lookups:
    """The S3 lookups of one batch (the module's rule): each object asked about once however
    many entries name it, at most _SIGN_LOOKUPS at once, each in one of the caller's slots."""

    def __init__(
        self, context: RequestContext, state: State, storage: Storage, downloads: Downloads
    ) -> None:
        self._context = context
        self._state = state
        self._storage = storage
        self._downloads = downloads
        self._gate = asyncio.Semaphore(_SIGN_LOOKUPS)
        self._deliveries: dict[tuple[str, ObjectRef], asyncio.Future[str]] = {}
        self._absences: dict[ObjectRef, asyncio.Future[None]] = {}

    async def delivery(self, route: Route, ref: ObjectRef) -> str:
        """The delivery method for the object on this route (a HEAD for `auto`, at most once)."""
        if route.settings.delivery != "auto":
            return route.settings.delivery
        key = (route.name, ref)  # routes differ in stream_below
        found = self._deliveries.get(key)
        if found is None:
            found = self._deliveries[key] = asyncio.ensure_future(self._choose(route, ref))
        # Shielded: the entries sharing one lookup do not cancel it for each other.
        return await asyncio.shield(found)

    async def absent(self, target: UploadTarget) -> None:
        """412 if the upload's key is taken and the route does not overwrite (one HEAD per
        object)."""
        if target.settings.overwrite:
            return
        found = self._absences.get(target.ref)
        if found is None:
            found = self._absences[target.ref] = asyncio.ensure_future(self._check(target))
        await asyncio.shield(found)

    async def _choose(self, route: Route, ref: ObjectRef) -> str:
        async with self._gate:
            return await self._downloads.choose_delivery(route, ref, self._context)

    async def _check(self, target: UploadTarget) -> None:
        async with self._gate, absence_check_slot(self._state, self._context, target):
            await check_absent(self._storage, target)


def _refusal(path: str, exc: ProxyError) -> dict[str, Any]:
    """One path's refusal in a sign API answer: its own status, as its GET would have had."""
    refused: dict[str, Any] = {"path": path, "status": exc.status, "error": exc.detail}
    if "Retry-After" in exc.headers:
        refused["retry_after"] = int(exc.headers["Retry-After"])
    return refused
