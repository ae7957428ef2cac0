"""Presigned multipart uploads (the sign API's `multipart`, `resume`, `complete` and `abort`
entries): the proxy creates, lists, joins and drops an upload in S3, and signs one URL per
part; the parts themselves go from the client straight to S3. Its rules:

1. Every refusal that needs no S3 comes first, in the order a reader would check them: the
   route takes multipart uploads (405), the type (415), the size (400, 413 past max_bytes),
   the shape of the upload id and of the part list (400). Nothing is created, listed or
   signed for a request that fails one.
2. An upload id is accepted only for the key the caller's own path renders. Before anything
   is listed, signed, joined or dropped, S3 must list that id as open on exactly that key
   (Writes.open_uploads); else 404, the same answer as for an id that never existed, so
   another user's id is neither usable nor confirmed. One sign API request lists a key's
   open uploads once (OpenUploads), however many entries name ids on it: a listing may take
   ten pages, and a batch of guessed or repeated ids must not cost ten calls each.
3. A part URL signs its part's exact length from the plan (parts.py), so the parts add up to
   the declared size, itself within max_bytes. At most `budget` URLs go in one answer; the
   client asks `resume` for the rest. URLs live no longer than the route's ttl, the token and
   the signing credentials, and none is signed for a token about to expire (401).
4. `complete` checks the part list against what S3 holds and says what is wrong (400),
   leaving the upload as it is, resumable; the joined size is checked against max_bytes
   again (413). With `overwrite: false` a HEAD refuses a taken key before the upload begins
   (409), and CompleteMultipartUpload carries If-None-Match: *, so of two uploads racing for
   one key only one lands (the other is 409 too).
5. `abort` drops the upload and every part of it.

The caller has routed, authenticated, authorized and rate-limited the entry before any of
this runs; answers carry no path (the sign API adds it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import Route, UploadSettings
from ..contenttype import InlineTypes
from ..errors import (
    BadRequest,
    KeyExists,
    MethodNotAllowed,
    NotFound,
    PreconditionFailed,
    UploadNotFound,
)
from ..presign import Credentials, Lifetime
from ..request import ObjectRef
from ..storage import Storage, WriteCondition
from .parts import (
    PartPlan,
    check_completion,
    check_held,
    declared_size,
    missing_parts,
    parse_parts,
    plan_parts,
)
from .presigned import iso_time, signing_lifetime
from .rules import allowed_type

# S3's upload ids are URL-safe tokens (AWS: letters, digits, `.`, `_`, `-`; others base64).
_UPLOAD_ID = re.compile(r"[A-Za-z0-9._~+/=-]{1,1024}")


@dataclass(frozen=True)
class MultipartPlace:
    """Where a caller's multipart upload lives: its route's object, under its limits."""

    route: str
    ref: ObjectRef  # the object the caller's own path renders (config: never SSE-C)
    settings: UploadSettings
    types: InlineTypes


@dataclass(frozen=True)
class PartSigning:
    """How long URLs may live: the route's ttl from `now`, within the token's expiry."""

    ttl: int
    now: float
    token_expires_at: float | None


class OpenUploads:
    """The uploads open on each key, as S3 listed them once in this sign API request (rule
    2), and as this request's own steps changed them since."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._listed: dict[ObjectRef, set[str]] = {}

    async def holds(self, ref: ObjectRef, upload_id: str) -> bool:
        listed = self._listed.get(ref)
        if listed is None:
            listed = self._listed[ref] = set(await self._storage.writes.open_uploads(ref))
        return upload_id in listed

    def began(self, ref: ObjectRef, upload_id: str) -> None:
        if ref in self._listed:
            self._listed[ref].add(upload_id)

    def ended(self, ref: ObjectRef, upload_id: str) -> None:
        self._listed.get(ref, set()).discard(upload_id)


@dataclass(frozen=True)
class Completed:
    etag: str
    size: int

    def answer(self) -> dict[str, Any]:
        return {"status": 201, "etag": self.etag}


# The sign API's entry kinds this module answers, in the order a batch answers them.
MULTIPART_KINDS = ("multipart", "resume", "complete", "abort")


@dataclass(frozen=True)
class Answered:
    """One entry's answer (without its path), the part URLs it carries, and the object it
    stored (a `complete`)."""

    answer: dict[str, Any]
    part_urls: int = 0
    stored: Completed | None = None


async def answer_entry(
    kind: str,
    storage: Storage,
    place: MultipartPlace,
    entry: Mapping[str, Any],
    signing: PartSigning,
    budget: int,
    uploads: OpenUploads,
) -> Answered:
    """Run one entry of `kind` (one of MULTIPART_KINDS) with its fields as the client sent
    them; `uploads`: what this request has learnt of the keys' open uploads."""
    upload_id = entry.get("upload_id")
    if kind == "multipart":
        begun = await begin(
            storage, place, entry.get("content_type"), entry.get("size"), signing, budget
        )
        uploads.began(place.ref, begun["upload_id"])
        return Answered(begun, len(begun["parts"]))
    if kind == "resume":
        resumed = await resume(
            storage, place, upload_id, entry.get("size"), signing, budget, uploads
        )
        return Answered(resumed, len(resumed["parts"]))
    if kind == "complete":
        done = await complete(storage, place, upload_id, entry.get("parts"), uploads)
        return Answered(done.answer(), stored=done)
    if kind == "abort":
        return Answered(await abort(storage, place, upload_id, uploads))
    raise ValueError(f"unknown multipart entry kind {kind!r}")


def multipart_place(route: Route, ref: ObjectRef) -> MultipartPlace:
    """The place of an upload to `ref` on `route`; 405 unless the route takes presigned
    multipart uploads (`upload.multipart: true`)."""
    settings = route.settings.upload
    if settings is None or not settings.multipart or route.upload_types is None:
        raise MethodNotAllowed(
            "route takes no multipart uploads", allowed=", ".join(route.settings.methods)
        )
    return MultipartPlace(route.name, ref, settings, route.upload_types)


async def begin(
    storage: Storage,
    place: MultipartPlace,
    content_type: object,
    size: object,
    signing: PartSigning,
    budget: int,
) -> dict[str, Any]:
    """CreateMultipartUpload, then URLs for the first `budget` parts."""
    stored_type = allowed_type(place.types, content_type if isinstance(content_type, str) else None)
    plan = plan_parts(declared_size(size, place.settings.max_bytes), place.settings.part_size)
    if not place.settings.overwrite:
        await _check_absent(storage, place)
    # Signed before the upload exists: a token too close to its expiry is refused (401)
    # without leaving an upload behind.
    credentials, lifetime = await signing_lifetime(
        storage, signing.ttl, signing.now, signing.token_expires_at
    )
    upload_id = await storage.writes.start_multipart(place.ref, stored_type)
    numbers = missing_parts(plan, (), budget)
    return {
        "upload_id": upload_id,
        "part_size": plan.part_size,
        "parts": _sign_parts(storage, place, upload_id, plan, numbers, credentials, lifetime),
        "expires_at": iso_time(lifetime.expires_at),
    }


async def resume(
    storage: Storage,
    place: MultipartPlace,
    upload_id: object,
    size: object,
    signing: PartSigning,
    budget: int,
    uploads: OpenUploads | None = None,
) -> dict[str, Any]:
    """The parts S3 holds, and URLs for the first `budget` parts it does not."""
    upload = parse_upload_id(upload_id)
    plan = plan_parts(declared_size(size, place.settings.max_bytes), place.settings.part_size)
    await _check_bound(uploads or OpenUploads(storage), place, upload)
    held = await storage.writes.list_parts(place.ref, upload)
    check_held(plan, held)
    wanted = missing_parts(plan, {part.number for part in held}, budget)
    urls: list[dict[str, Any]] = []
    expires_at = None
    if wanted:
        credentials, lifetime = await signing_lifetime(
            storage, signing.ttl, signing.now, signing.token_expires_at
        )
        urls = _sign_parts(storage, place, upload, plan, wanted, credentials, lifetime)
        expires_at = iso_time(lifetime.expires_at)
    return {
        "upload_id": upload,
        "part_size": plan.part_size,
        "uploaded": [
            {"number": part.number, "size": part.size, "etag": part.etag} for part in held
        ],
        "parts": urls,
        "expires_at": expires_at,
    }


async def complete(
    storage: Storage,
    place: MultipartPlace,
    upload_id: object,
    parts: object,
    uploads: OpenUploads | None = None,
) -> Completed:
    """CompleteMultipartUpload with the caller's part list, once it matches S3's parts."""
    upload = parse_upload_id(upload_id)
    listed = parse_parts(parts)
    uploads = uploads or OpenUploads(storage)
    await _check_bound(uploads, place, upload)
    held = await storage.writes.list_parts(place.ref, upload)
    size = check_completion(listed, {part.number: part for part in held}, place.settings.max_bytes)
    # Of two uploads racing for a key the route does not replace, only one lands (rule 4).
    condition = None if place.settings.overwrite else WriteCondition(None)
    try:
        etag = await storage.writes.complete_multipart(place.ref, upload, listed, condition)
    except PreconditionFailed:
        raise KeyExists("another upload took the key first (overwrite is false)") from None
    uploads.ended(place.ref, upload)
    return Completed(etag, size)


async def abort(
    storage: Storage, place: MultipartPlace, upload_id: object, uploads: OpenUploads | None = None
) -> dict[str, Any]:
    """AbortMultipartUpload: the upload and its parts are gone."""
    upload = parse_upload_id(upload_id)
    uploads = uploads or OpenUploads(storage)
    await _check_bound(uploads, place, upload)
    await storage.writes.abort_multipart(place.ref, upload)
    uploads.ended(place.ref, upload)
    return {"status": 204}


def parse_upload_id(value: object) -> str:
    """An entry's upload_id, or 400 (before S3 is asked)."""
    if not isinstance(value, str) or not _UPLOAD_ID.fullmatch(value):
        raise BadRequest("multipart entry without a well-formed upload_id", detail="upload_id")
    return value


async def _check_bound(uploads: OpenUploads, place: MultipartPlace, upload_id: str) -> None:
    """Rule 2: 404 unless S3 lists `upload_id` as open on this very key."""
    if not await uploads.holds(place.ref, upload_id):
        raise UploadNotFound("upload id not open on the caller's key")


async def _check_absent(storage: Storage, place: MultipartPlace) -> None:
    try:
        await storage.head(place.ref)
    except NotFound:
        return
    raise KeyExists("multipart upload to an existing key (overwrite is false)")


def _sign_parts(
    storage: Storage,
    place: MultipartPlace,
    upload_id: str,
    plan: PartPlan,
    numbers: list[int],
    credentials: Credentials,
    lifetime: Lifetime,
) -> list[dict[str, Any]]:
    """A URL per part number, each signing that part's length (rule 3)."""
    return [
        {
            "number": number,
            "url": storage.presign_part(
                credentials,
                place.ref,
                upload_id,
                number,
                plan.length(number),
                lifetime,
            ),
        }
        for number in numbers
    ]
