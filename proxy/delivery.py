"""The two ways an authorized request gets its object: stream it, or redirect to a presigned URL.

Decides which client headers go to S3 (single Range, conditionals) and which S3 headers come
back (length, type, validators, range). Statuses are settled before prepare(): once bytes have
been sent, a failure aborts the connection instead of writing a body that looks complete.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import web

from .config import RouteCacheSettings, RouteSettings
from .contenttype import SANDBOX_CSP, InlineTypes, safe_content_type
from .errors import NotModified, RangeNotSatisfiable, Unauthenticated, UpstreamError
from .objectcache import ObjectCache
from .presign import Lifetime, LifetimeError, plan_lifetime
from .storage import Conditions, ObjectMeta, ObjectStream, Storage, parse_http_date

_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})", re.IGNORECASE)
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_ASCII_SAFE = re.compile(r"[^A-Za-z0-9._()+ -]")


@dataclass(frozen=True)
class Presentation:
    """How a route presents one key: its fixed answer headers (disposition, type, caching,
    Vary, CORS), the object types it may show inline, and the attachment header otherwise."""

    headers: Mapping[str, str]
    inline: InlineTypes
    attachment: str


@dataclass
class Outcome:
    """What delivery reports to the access log."""

    bytes_from_s3: int = 0
    bytes_sent: int = 0
    first_byte: float | None = None  # perf_counter() after the first chunk was written
    cache_hit: bool = False
    aborted: str | None = None


def parse_range(header: str | None) -> str | None:
    """Return a normalized single byte range, or None to serve the whole object.

    Multi-range and malformed Range headers are ignored, which RFC 9110 (14.2) permits; S3
    itself serves only single ranges and answers 416 when the range starts past the end.
    """
    if not header:
        return None
    found = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if found is None:
        return None
    first, last = found.group(1), found.group(2)
    if not first and not last:
        return None
    if first and last and int(first) > int(last):
        return None
    if not first and int(last) == 0:
        return None  # "bytes=-0" asks for nothing; serve the representation instead.
    return f"bytes={first}-{last}"


def conditions_from(headers: Mapping[str, str]) -> Conditions:
    return Conditions(
        if_match=_single_line(headers.get("If-Match")),
        if_none_match=_single_line(headers.get("If-None-Match")),
        if_modified_since=parse_http_date(headers.get("If-Modified-Since")),
        if_unmodified_since=parse_http_date(headers.get("If-Unmodified-Since")),
    )


def range_for(headers: Mapping[str, str]) -> str | None:
    """Honour Range only when If-Range is absent; a stale If-Range means 'send it all'."""
    if "If-Range" in headers:
        # Checking If-Range needs the current validator before choosing; serving the full
        # representation is always a correct answer (RFC 9110 13.1.5).
        return None
    return parse_range(headers.get("Range"))


def _single_line(value: str | None) -> str | None:
    """A header value safe to forward: short, printable ASCII (else treated as absent)."""
    if value is None or len(value) > 1024 or not _PRINTABLE_ASCII.fullmatch(value):
        return None
    return value


def content_disposition(disposition: str, key: str) -> str:
    """RFC 6266 header with an ASCII fallback and an RFC 5987 UTF-8 filename from the key."""
    name = key.rsplit("/", 1)[-1] or "download"
    fallback = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    fallback = _ASCII_SAFE.sub("_", fallback).strip() or "download"
    encoded = quote(name, safe="")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def object_headers(meta: ObjectMeta, shown: Presentation) -> dict[str, str]:
    """Headers for a streamed object: whatever type S3 names, the body is inert on the
    proxy's origin (sandboxed, not sniffed), and shown inline only if the route allows it."""
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Type": safe_content_type(meta.content_type),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": SANDBOX_CSP,
    }
    for name, value in (
        ("ETag", meta.etag),
        ("Last-Modified", meta.last_modified),
        ("Content-Range", meta.content_range),
        ("Content-Encoding", meta.content_encoding),
        ("Content-Language", meta.content_language),
    ):
        if value and _single_line(value):
            headers[name] = value
    headers.update(shown.headers)
    if not shown.inline.allows(headers["Content-Type"]):
        headers["Content-Disposition"] = shown.attachment
    return headers


async def stream(
    request: web.BaseRequest,
    storage: Storage,
    bucket: str,
    key: str,
    shown: Presentation,
    chunk_outcome: Outcome,
    write_timeout: float = 60.0,
    cache: ObjectCache | None = None,
    cache_settings: RouteCacheSettings | None = None,
) -> web.StreamResponse:
    conditions = conditions_from(request.headers)
    try:
        if cache is not None and cache_settings is not None and _cacheable(request):
            return await _from_cache(
                request,
                storage,
                bucket,
                key,
                shown,
                chunk_outcome,
                write_timeout,
                cache,
                cache_settings,
            )
        if request.method == "HEAD":
            meta = await storage.head(bucket, key, conditions)
            response = web.StreamResponse(status=200, headers=object_headers(meta, shown))
            response.content_length = meta.content_length
            return response
        obj = await storage.get(bucket, key, conditions, range_for(request.headers))
        return await send_object(request, obj, shown, chunk_outcome, write_timeout)
    except NotModified as exc:
        # RFC 9111 4.3.4: a 304 repeats the Cache-Control the 200 would have carried.
        # So does Vary: a cache must key the 304 as it keyed the 200.
        for name in ("Cache-Control", "Vary"):
            if name in shown.headers:
                exc.headers[name] = shown.headers[name]
        raise


async def send_object(
    request: web.BaseRequest,
    obj: ObjectStream,
    shown: Presentation,
    chunk_outcome: Outcome,
    write_timeout: float,
) -> web.StreamResponse:
    """Stream an opened S3 object to the client, then release it."""
    try:
        status = 206 if obj.meta.content_range else 200
        response = web.StreamResponse(status=status, headers=object_headers(obj.meta, shown))
        response.content_length = obj.meta.content_length
        try:
            await response.prepare(request)
        except ConnectionError:
            chunk_outcome.aborted = "client disconnected"
            return response
        try:
            async for chunk in obj.chunks:
                chunk_outcome.bytes_from_s3 += len(chunk)
                # write() waits while the client's socket buffer is full: back-pressure keeps
                # memory bounded per stream, and the timeout frees a stalled client's slot.
                async with asyncio.timeout(write_timeout):
                    await response.write(chunk)
                if chunk_outcome.first_byte is None:
                    chunk_outcome.first_byte = time.perf_counter()
                chunk_outcome.bytes_sent += len(chunk)
        except ConnectionError:
            chunk_outcome.aborted = "client disconnected"
            return response
        except TimeoutError:
            chunk_outcome.aborted = "client stopped reading (limits.client_write_timeout)"
            if request.transport is not None:
                request.transport.abort()
            return response
        except Exception as exc:
            chunk_outcome.aborted = f"upstream failed mid-stream: {getattr(exc, 'reason', exc)}"
            if request.transport is not None:
                request.transport.abort()
            return response
        if chunk_outcome.bytes_from_s3 != obj.meta.content_length:
            chunk_outcome.aborted = "upstream body shorter than its Content-Length"
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response
    finally:
        await obj.aclose()


# Requests the memory cache answers itself; anything more exotic goes to S3.
_BYPASS_CACHE = ("If-Match", "If-Unmodified-Since", "If-Range")


def _cacheable(request: web.BaseRequest) -> bool:
    return not any(name in request.headers for name in _BYPASS_CACHE)


async def _from_cache(
    request: web.BaseRequest,
    storage: Storage,
    bucket: str,
    key: str,
    shown: Presentation,
    chunk_outcome: Outcome,
    write_timeout: float,
    cache: ObjectCache,
    settings: RouteCacheSettings,
) -> web.StreamResponse:
    cached = cache.get(bucket, key, settings.max_age)
    if cached is not None:
        chunk_outcome.cache_hit = True
        return _memory_response(request, cached.meta, cached.body, shown, chunk_outcome)
    # Fill with an unconditional, whole-object GET; conditionals and ranges are then answered
    # from memory like any later request.
    obj = await storage.get(bucket, key, Conditions(), None)
    if obj.meta.content_length > settings.max_object_bytes or obj.meta.content_range:
        if request.method == "HEAD" or "Range" in request.headers or _conditional(request):
            await obj.aclose()  # too big to cache: ask S3 the client's own question
            return await stream(request, storage, bucket, key, shown, chunk_outcome, write_timeout)
        return await send_object(request, obj, shown, chunk_outcome, write_timeout)
    try:
        body = b"".join([chunk async for chunk in obj.chunks])
    finally:
        await obj.aclose()
    if len(body) != obj.meta.content_length:
        raise UpstreamError("GetObject: body shorter than its Content-Length")
    cache.put(bucket, key, obj.meta, body)
    return _memory_response(request, obj.meta, body, shown, chunk_outcome)


def _conditional(request: web.BaseRequest) -> bool:
    return "If-None-Match" in request.headers or "If-Modified-Since" in request.headers


def _memory_response(
    request: web.BaseRequest,
    meta: ObjectMeta,
    body: bytes,
    shown: Presentation,
    chunk_outcome: Outcome,
) -> web.Response:
    headers = object_headers(meta, shown)
    headers.pop("Content-Range", None)
    if _not_modified(request.headers, meta):
        kept: tuple[str, ...] = ("ETag", "Last-Modified", "Cache-Control", "Vary")
        validators = {name: headers[name] for name in kept if name in headers}
        return web.Response(status=304, headers=validators)
    size = len(body)
    status, payload = 200, body
    byte_range = range_for(request.headers)
    if byte_range is not None:
        span = _resolve_range(byte_range, size)
        if span is None:
            raise RangeNotSatisfiable("range not satisfiable", size=size)
        first, last = span
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        status, payload = 206, body[first : last + 1]
    chunk_outcome.first_byte = time.perf_counter()
    if request.method != "HEAD":
        chunk_outcome.bytes_sent = len(payload)
    return web.Response(status=status, body=payload, headers=headers)


def _not_modified(headers: Mapping[str, str], meta: ObjectMeta) -> bool:
    if_none_match = _single_line(headers.get("If-None-Match"))
    if if_none_match is not None:
        if meta.etag is None:
            return False
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or meta.etag.removeprefix("W/") in tags
    since = parse_http_date(headers.get("If-Modified-Since"))
    modified = parse_http_date(meta.last_modified)
    return since is not None and modified is not None and modified <= since


def _resolve_range(byte_range: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte positions for a normalized single range, or None if unsatisfiable."""
    first_text, last_text = byte_range.removeprefix("bytes=").split("-")
    if not first_text:
        length = int(last_text)
        return (max(0, size - length), size - 1) if size else None
    first = int(first_text)
    if first >= size:
        return None
    last = min(int(last_text), size - 1) if last_text else size - 1
    return first, last


@dataclass(frozen=True)
class SignedLink:
    url: str
    lifetime: Lifetime

    @property
    def expires_at_iso(self) -> str:
        return datetime.fromtimestamp(self.lifetime.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LinkCache:
    """Stable URLs repeat within their window: remember them (bounded LRU) instead of
    signing again. Keyed by everything the URL is a function of."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._urls: OrderedDict[tuple[object, ...], str] = OrderedDict()

    def get(self, key: tuple[object, ...]) -> str | None:
        url = self._urls.get(key)
        if url is not None:
            self._urls.move_to_end(key)
        return url

    def put(self, key: tuple[object, ...], url: str) -> None:
        self._urls[key] = url
        if len(self._urls) > self._size:
            self._urls.popitem(last=False)


async def sign_link(
    storage: Storage,
    settings: RouteSettings,
    method: str,
    bucket: str,
    key: str,
    overrides: Mapping[str, str],
    now: float,
    token_expires_at: float | None,
    cache: LinkCache | None = None,
) -> SignedLink:
    credentials = await storage.credentials()
    try:
        lifetime = plan_lifetime(
            now, settings.ttl, settings.stable, token_expires_at, credentials.expires_at
        )
    except LifetimeError as exc:
        if exc.limit == "token":
            raise Unauthenticated("token expires before a link could be used") from None
        raise UpstreamError("AWS credentials expired; cannot sign") from None
    # A presigned HEAD URL cannot carry response overrides; they only make sense for GET.
    signed_overrides = overrides if method == "GET" else None
    cache_key: tuple[object, ...] | None = None
    if cache is not None and settings.stable:
        cache_key = (
            credentials.access_key,
            credentials.token,
            method,
            bucket,
            key,
            tuple(sorted((signed_overrides or {}).items())),
            lifetime.signed_at,
            lifetime.expires_in,
        )
        url = cache.get(cache_key)
        if url is not None:
            return SignedLink(url, lifetime)
    url = storage.presign(credentials, method, bucket, key, lifetime, signed_overrides)
    if cache is not None and cache_key is not None:
        cache.put(cache_key, url)
    return SignedLink(url, lifetime)


def wants_json(accept: str | None) -> bool:
    """True when the client explicitly accepts application/json (q > 0), as fetch()/XHR do."""
    if not accept or "json" not in accept:
        return False
    for media_range in accept.split(","):
        media, *params = (part.strip() for part in media_range.split(";"))
        if media.lower() == "application/json":
            return not any(
                p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params
            )
    return False


def _is_zero_quality(param: str) -> bool:
    name, _, value = param.replace(" ", "").partition("=")
    try:
        return name.lower() == "q" and float(value) == 0
    except ValueError:
        return False


def redirect_response(link: SignedLink, as_json: bool, per_caller: bool) -> web.Response:
    lifetime = link.lifetime
    # A stable URL may be cached for as long as it stays valid (less a margin); a one-off
    # URL must not be, or a later page view would reuse a dead link.
    cache = f"private, max-age={lifetime.max_age}" if lifetime.max_age > 0 else "no-store"
    # When the answer depends on who asks, a browser shared by two people must not hand one
    # of them the other's cached redirect.
    vary = "Accept, Authorization, Cookie" if per_caller else "Accept"
    headers = {"Cache-Control": cache, "Vary": vary, "Referrer-Policy": "no-referrer"}
    if as_json:
        body = json.dumps({"url": link.url, "expires_at": link.expires_at_iso})
        return web.Response(status=200, text=body, content_type="application/json", headers=headers)
    return web.Response(status=302, headers={"Location": link.url, **headers})
