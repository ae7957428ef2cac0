"""The sign API (`POST sign_api.path`): one request for a whole page of links, upload forms
and multipart upload steps (the N+1 problem). Each path is routed, authorized and
rate-limited exactly as its own GET (or, for an upload, an upload of that path) would be, and
answered on its own: a URL, a form, a step of a multipart upload (uploads/multipart.py), or
the refusal with the status that request would have had. Each entry is audited as its own
request would be: a URL signed (by its delivery method), an upload form or part URLs signed,
an upload completed, an access refused (401, 403, 429) or an upload refused, naming the
entry's path, route and object.

Rule: a batch costs S3 no more than its distinct objects. A request holds at most
`sign_api.max_paths` entries, of which at most `max_uploads` write (upload forms and
multipart steps; 413 past either); every entry spends its route's rate limits (paths and
upload forms all in one call); each object is asked about once however many entries name it
(a metadata HEAD for `auto` routes, an absence check for `overwrite: false` upload forms), at
most _SIGN_LOOKUPS at once; and every S3 request made for an entry holds one of the caller's
slots (limits.max_streams_per_*).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..audit import DENIED
from ..auth import Clock
from ..config import Config, Route
from ..delivery import Link
from ..errors import (
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
    UnsupportedMediaType,
)
from ..ops.metrics import Telemetry
from ..request import ObjectRef, RequestContext
from ..routing import Router
from ..state import Bucket, State
from ..storage import Storage
from ..uploads import (
    MULTIPART_KINDS,
    Answered,
    OpenUploads,
    PartSigning,
    UploadTarget,
    answer_entry,
    check_absent,
    check_size,
    multipart_place,
    post_form,
    upload_target,
)
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
        telemetry: Telemetry,
    ) -> None:
        self._settings = config.settings.sign_api
        self._telemetry = telemetry
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
        steps: dict[str, list[object]] = {}
        for kind in MULTIPART_KINDS:
            entries = body.get(kind) if isinstance(body, dict) else None
            if entries is None:
                continue
            if not isinstance(entries, list):
                raise BadRequest(
                    f"sign API {kind} not a list",
                    detail=f'expected {{"{kind}": [{{"path": ..., ...}}]}}',
                )
            steps[kind] = entries
        if paths is None and (isinstance(uploads, list) or steps):
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
        count = len(paths) + len(uploads or ()) + sum(len(e) for e in steps.values())
        if count > self._settings.max_paths:
            raise PayloadTooLarge(
                f"sign API batch of {count} paths",
                detail=f"at most {self._settings.max_paths} paths per request",
            )
        writes = len(uploads or ()) + sum(len(e) for e in steps.values())
        if writes > self._settings.max_uploads:
            raise PayloadTooLarge(
                f"sign API batch of {writes} uploads",
                detail=f"at most {self._settings.max_uploads} uploads per request",
            )
        claims = await self._access.optional_claims(request, context)
        # Admitted in order, before any S3 call: each path spends its route's rate-limit
        # tokens exactly as a GET would (an upload form as its POST), so the first entries
        # within the limit pass. All their buckets are spent in one call (one Redis round trip
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
        results, cookies = await self._sign_admitted(context, paths, admitted, lookups)
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
        budget = [self._settings.max_paths]  # part URLs this answer may still carry
        open_uploads = OpenUploads(self._storage)  # each key's listed once per request
        for kind, entries in steps.items():
            answers = [
                await self._sign_multipart(context, kind, entry, claims, budget, open_uploads)
                for entry in entries
            ]
            answer[kind] = answers
            context.reason += _step_summary(kind, answers)
        response = web.json_response(
            answer, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        )
        for value in cookies:
            response.headers.add("Set-Cookie", value)
        return response

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
            return _Form(path, exc, group, (route, ref))
        return _Form(path, (route, target, size), group, (route, ref))

    async def _sign_upload(
        self,
        context: RequestContext,
        form: _Form,
        over_limit: ProxyError | None,
        lookups: _Lookups,
    ) -> dict[str, Any]:
        """One upload entry's answer: a presigned POST form, or its refusal (a 429 from its
        buckets first, as on a POST), audited as its own request's would be."""
        path, named = form.path, form.named or (None, None)
        if over_limit is not None:
            return _refused(context, path, over_limit, upload=True)
        if isinstance(form.admitted, ProxyError):
            return _refused(context, path, form.admitted, True, *named)
        route, target, size = form.admitted
        ref = target.ref
        try:
            await lookups.absent(target)
            signed = await post_form(
                self._storage, target, size, route.settings.ttl, self._clock(), context.expires_at
            )
        except ProxyError as exc:
            return _refused(context, path, exc, True, route, ref)
        context.audit(
            "url.signed",
            path=path,
            route=route.name,
            bucket=ref.bucket,
            key=ref.key,
            url_method="POST",
            expires=signed["expires_at"],
        )
        return {"path": path, **signed}

    async def _sign_multipart(
        self,
        context: RequestContext,
        kind: str,
        entry: object,
        claims: Claims | None,
        budget: list[int],
        open_uploads: OpenUploads,
    ) -> dict[str, Any]:
        """One multipart entry of `kind`, authorized as an upload of its path on a route with
        `upload.multipart` (any upload method: the parts go to S3, not to the route), and
        spending its route's rate-limit tokens; or its refusal."""
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            self._telemetry.multipart_step(kind, 400)
            shape = BadRequest(detail='each entry is {"path": "/path", ...}')
            return _refused(context, "", shape, upload=True)
        path = entry["path"]
        admitted, group = self._admit(context, path, claims, None)
        over_limit = (await self._state.take([group]))[0]
        # A 429 from the route's buckets comes before an authorization refusal, as on a GET.
        found = over_limit if over_limit is not None else admitted
        if isinstance(found, ProxyError):
            self._telemetry.multipart_step(kind, found.status)
            return _refused(context, path, found, upload=True)
        route, ref = found
        try:
            place = multipart_place(route, ref)
            lifetime = PartSigning(route.settings.ttl, self._clock(), context.expires_at)
            # Its S3 requests (a HEAD, Create/List/Complete/Abort) are made for the caller.
            async with self._state.s3_slot(context.client or "unknown", context.subject_key):
                answered = await answer_entry(
                    kind, self._storage, place, entry, lifetime, max(budget[0], 0), open_uploads
                )
        except ProxyError as exc:
            self._telemetry.multipart_step(kind, exc.status)
            return _refused(context, path, exc, True, route, ref)
        budget[0] -= answered.part_urls
        status = int(answered.answer.get("status", 200))
        self._telemetry.multipart_step(kind, status, answered.part_urls)
        _audit_step(context, kind, path, route, ref, answered)
        if answered.stored is not None:
            # What this process cached about the key is stale now (other workers' expires).
            self._downloads.forget(ref)
        return {"path": path, **answered.answer}

    def _admit(
        self,
        context: RequestContext,
        path: str,
        claims: Claims | None,
        method: str | None = "GET",
    ) -> tuple[Admitted, list[Bucket]]:
        """Route and authorize one path of a batch as its GET (or, for an upload form, its
        POST; None: any method, for multipart entries) would be: the route and object, or the
        refusal; and the rate-limit buckets that
        request would spend (a 429 from those takes precedence over an authorization refusal,
        as on a GET)."""
        try:
            found = self._router.match(path) if path.startswith("/") else None
            if found is None:
                raise NotFound("no route matches")
            route = self._routes[found.index]
            if method is not None and method not in route.settings.methods:
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
    ) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        """Answers in the order of `paths`, and the Set-Cookie values of the answer. Paths on
        `auto` routes may need a HEAD: those run concurrently (through `lookups`); the others
        need no S3 call and are signed inline (a task each would add half again to a large
        batch's CPU cost).

        A browser holds one set of CloudFront cookies (fixed names, Path=/), so an answer sets
        the cookies of one scope: the first cookie path's, in order; a path of another scope
        is refused (409) rather than given a URL its cookies would not open."""
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
        ordered: list[dict[str, Any]] = []
        scope: str | None = None
        cookies: tuple[str, ...] = ()
        for index in range(len(paths)):
            entry, link = results[index]
            if link is not None and link.cookie_scope is not None:
                if scope is None:
                    scope, cookies = link.cookie_scope, link.set_cookies
                elif link.cookie_scope != scope:
                    entry = _refusal(paths[index], _another_scope(scope))
            ordered.append(entry)
        return ordered, cookies

    async def _sign_one(
        self,
        context: RequestContext,
        path: str,
        admitted: Admitted,
        lookups: _Lookups,
    ) -> tuple[dict[str, Any], Link | None]:
        if isinstance(admitted, ProxyError):
            return _refused(context, path, admitted), None
        route, ref = admitted
        try:
            delivery = await lookups.delivery(route, ref)
            link = await self._downloads.method(delivery).link(context, route, ref, path)
        except ProxyError as exc:
            return _refused(context, path, exc, False, route, ref), None
        entry = {"path": path, "url": link.url, "expires_at": link.expires_at}
        if link.cookie_scope is not None:
            entry["cookie_scope"] = link.cookie_scope
        return entry, link


@dataclass(frozen=True, slots=True)
class _Form:
    """One `uploads` entry once admitted: its route, target and declared size, or why not;
    and the rate-limit buckets it spends."""

    path: str
    admitted: tuple[Route, UploadTarget, int | None] | ProxyError
    group: list[Bucket]
    named: tuple[Route, ObjectRef] | None = None  # what its audit event names, once known


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


def _another_scope(scope: str) -> Conflict:
    return Conflict(
        "sign API: a second cookie scope in one answer",
        detail=f"another cookie scope ({scope}) is already set by this answer; sign this path "
        "in a request of its own",
    )


def _audit_step(
    context: RequestContext,
    kind: str,
    path: str,
    route: Route,
    ref: ObjectRef,
    answered: Answered,
) -> None:
    """A multipart step's audit event: part URLs handed out (`url.signed`, with the upload's
    id, which S3's access log shows in each part's Request-URI), or the upload completed."""
    named = {"path": path, "route": route.name, "bucket": ref.bucket, "key": ref.key}
    upload_id = answered.answer.get("upload_id")
    if answered.part_urls:
        context.audit(
            "url.signed",
            **named,
            url_method="PUT",
            step=kind,
            upload_id=upload_id,
            parts=answered.part_urls,
            expires=answered.answer.get("expires_at"),
        )
    if answered.stored is not None:
        context.audit(
            "object.uploaded",
            **named,
            status=201,
            step=kind,
            bytes=answered.stored.size,
            etag=answered.stored.etag,
        )


def _refused(
    context: RequestContext,
    path: str,
    exc: ProxyError,
    upload: bool = False,
    route: Route | None = None,
    ref: ObjectRef | None = None,
) -> dict[str, Any]:
    """One entry's refusal, audited as its own request's would be (access.denied for a 401,
    403 or 429; upload.refused for another refusal of an upload form), then answered."""
    event = "access.denied" if exc.status in DENIED else "upload.refused" if upload else None
    if event is not None:
        named = {} if ref is None else {"bucket": ref.bucket, "key": ref.key}
        if route is not None:
            named["route"] = route.name
        context.audit(event, path=path, **named, status=exc.status, reason=exc.reason)
    return _refusal(path, exc)


def _refusal(path: str, exc: ProxyError) -> dict[str, Any]:
    """One path's refusal in a sign API answer: its own status, as its GET would have had."""
    refused: dict[str, Any] = {"path": path, "status": exc.status, "error": exc.detail}
    if "Retry-After" in exc.headers:
        refused["retry_after"] = int(exc.headers["Retry-After"])
    return refused


def _step_summary(kind: str, answers: list[dict[str, Any]]) -> str:
    """What the access line says of a batch's multipart entries of one kind: how many, the
    part URLs handed out and the refusals (never an upload id or a URL)."""
    urls = sum(len(answer.get("parts", ())) for answer in answers if "upload_id" in answer)
    refused = sum(1 for answer in answers if int(answer.get("status", 200)) >= 400)
    notes = [f"{urls} part URLs"] if urls else []
    notes += [f"{refused} refused"] if refused else []
    return f", {len(answers)} {kind}" + (f" ({', '.join(notes)})" if notes else "")
