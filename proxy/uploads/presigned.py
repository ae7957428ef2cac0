"""Redirect uploads: the client sends its bytes straight to S3 with a URL or form the proxy
signed after authorizing it. A PUT answers 307 to a presigned PUT; the sign API answers a
presigned POST form per entry. No body passes through the proxy. Its rules:

1. Everything a signature can pin is pinned: the exact key; for a PUT, the declared
   Content-Type and Content-Length (signed headers: S3 refuses the request unless the client
   sends exactly those values); for a POST form, the Content-Type and a content-length-range
   of 0..max_bytes.
2. A signature lives no longer than the route's ttl, the caller's token and the signing
   credentials (presign.plan_lifetime).
3. The client's preconditions and the route's `overwrite` are judged before signing
   (preconditions.py: 412, 409), and those S3 can check itself are signed in: the client's
   `If-None-Match: *` or single-tag `If-Match`, which it sends again to S3. What cannot be
   pinned (`overwrite: false` alone, If-Unmodified-Since, tag lists) holds only when the proxy
   looks: two racing uploads may both land; docs/uploads.md says so.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..errors import LengthRequired, Unauthenticated, UpstreamError
from ..presign import Credentials, Lifetime, LifetimeError, plan_lifetime
from ..request import RequestContext
from ..storage import Storage
from .preconditions import NO_HEADERS, plan_write, signed_preconditions
from .rules import UploadTarget, check_size


async def redirect_put(
    request: web.BaseRequest,
    context: RequestContext,
    storage: Storage,
    target: UploadTarget,
    ttl: int,
    now: float,
) -> web.Response:
    """307 to a presigned PUT for this request's declared type and length; the body, if the
    client sent it already, is not read. The URL carries the request's id (x-request-id, for
    S3's server access log) and is a `url.signed` audit event."""
    length = request.content_length
    if length is None:
        # The length is signed, so it must be known (a chunked PUT cannot be presigned).
        raise LengthRequired("redirect upload without Content-Length")
    check_size(target.settings, length)
    await plan_write(storage, target, request.headers, always_look=False)
    credentials, lifetime = await signing_lifetime(storage, ttl, now, context.expires_at)
    url = storage.presign_put(
        credentials,
        target.ref,
        lifetime,
        target.content_type,
        length,
        signed_preconditions(request.headers),
        request_id=context.id,
    )
    context.audit(
        "url.signed", url_method="PUT", bytes=length, expires=iso_time(lifetime.expires_at)
    )
    return web.Response(
        status=307,
        headers={"Location": url, "Cache-Control": "no-store", "Content-Length": "0"},
    )


async def check_absent(storage: Storage, target: UploadTarget) -> None:
    """A form's one look at its key (preconditions.py rule 1: 409 when an object is there
    and the route does not overwrite; no look when it does). The sign API runs it once per
    object of a batch, before `post_form` for each entry naming it."""
    await plan_write(storage, target, NO_HEADERS, always_look=False)


async def post_form(
    storage: Storage,
    target: UploadTarget,
    size: int | None,
    ttl: int,
    now: float,
    token_expires_at: float | None,
) -> dict[str, Any]:
    """One sign API answer: a presigned POST form for the target. The caller has run the
    target's `check_absent` first."""
    check_size(target.settings, size)
    credentials, lifetime = await signing_lifetime(storage, ttl, now, token_expires_at)
    form = storage.presign_post(
        credentials, target.ref, target.content_type, target.settings.max_bytes, lifetime
    )
    return {"url": form.url, "fields": form.fields, "expires_at": iso_time(lifetime.expires_at)}


def iso_time(epoch: int) -> str:
    """An expiry as the sign API writes it: UTC, to the second."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def signing_lifetime(
    storage: Storage, ttl: int, now: float, token_expires_at: float | None
) -> tuple[Credentials, Lifetime]:
    """The credentials to sign with, and a lifetime none of the limits outlives (rule 2):
    401 when the token expires first, 502 when the credentials do."""
    credentials = await storage.credentials()
    try:
        return credentials, plan_lifetime(now, ttl, None, token_expires_at, credentials.expires_at)
    except LifetimeError as exc:
        if exc.limit == "token":
            raise Unauthenticated("token expires before an upload could be signed") from None
        raise UpstreamError("AWS credentials expired; cannot sign") from None
