"""Streaming: the proxy fetches the object from S3 (or its object cache) and sends the bytes.

Decides what goes to S3 (a single Range; never the client's conditionals, which the proxy
judges itself with conditional.py on S3's answer) and which S3 headers come back (length,
type, validators, range). Statuses are settled before prepare(): once bytes have
been sent, a failure aborts the connection instead of writing a body that looks complete.
Each stream holds one of the stream slots (limits.max_streams*) while it runs, and is
watched for a revocation of its credential (state.State.watch): one made while it runs, on
any replica, closes its connection (the access line and proxy_streams_stopped_total say why).
With the builtin engine, the rest of a long body goes from the S3 socket to the client's by
itself once its first piece is out (upstream.py rule 5): the task only waits for a slow
client's drain, under the same write deadline.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

from aiohttp import web

from ..conditional import (
    NOT_MODIFIED,
    PRECONDITION_FAILED,
    ByteRange,
    has_preconditions,
    if_range_holds,
    parse_ranges,
    precondition_status,
    satisfiable_spans,
)
from ..config import Route, RouteCacheSettings
from ..errors import (
    NotModified,
    PreconditionFailed,
    ProxyError,
    RangeNotSatisfiable,
    UpstreamError,
)
from ..objectcache import ObjectCache
from ..ops import Telemetry
from ..request import ObjectRef, RequestContext
from ..state import State, Watch
from ..storage import BodyRelay, ObjectMeta, ObjectStream, Storage
from ..wire import WireHead, WireResponse
from .method import Link
from .presentation import Presentation, object_head, object_headers, presentation


class Stream:
    """The `stream` method of one config: objects fetched through `storage`, the small ones of
    routes with `cache:` kept in `objects`, each stream holding one of `state`'s slots."""

    def __init__(
        self,
        storage: Storage,
        objects: ObjectCache,
        state: State,
        write_timeout: float,
        telemetry: Telemetry,
    ) -> None:
        self._settings = StreamSettings(storage, objects, write_timeout)
        self._state = state
        # (route name, key) -> how the route presents the key to a request without CORS
        # headers: a function of this config's route and the key only, so made once per
        # hot key, not per request.
        self._shown: dict[tuple[str, str], Presentation] = {}
        self._telemetry = telemetry

    async def answer(
        self, request: web.BaseRequest, context: RequestContext, route: Route, ref: ObjectRef
    ) -> web.StreamResponse:
        shown = self._presentation(route, ref.key, context)
        lease = await self._state.acquire_stream(context.client or "unknown", context.subject_key)
        cache = route.settings.cache
        response: web.StreamResponse
        try:
            cached = self._settings.objects.get(ref, cache.max_age) if cache else None
            if cached is not None:
                # A hit is answered without an await between here and the return (the
                # connection writes the body after): no revocation can land while it is
                # made, so watching it for one would cost a watch and catch nothing.
                age = self._settings.objects.age(cached)
                response = _memory_response(request, context, cached.meta, cached.body, shown, age)
            else:
                watch = watch_credential(self._state, self._telemetry, request, context, "stream")
                try:
                    response = await (
                        _fill_cache(request, context, ref, shown, cache, self._settings)
                        if cache
                        else stream(request, context, ref, shown, None, self._settings)
                    )
                finally:
                    if watch is not None:
                        self._state.unwatch(watch)
        finally:
            await self._state.release_stream(lease)
        if context.audited and request.method == "GET":
            # Who got what, and all of it or not: a client that hung up mid-body got
            # `bytes_sent`. (A body answered from memory is handed to the connection whole.)
            whole = context.reason is None and response.content_length in (
                None,
                context.bytes_sent,
            )
            context.audit("object.streamed", bytes=context.bytes_sent, complete=whole)
        return response

    def _presentation(self, route: Route, key: str, context: RequestContext) -> Presentation:
        if context.cors:
            return presentation(route, key, context.cors)  # depends on the request's Origin
        shown = self._shown.get((route.name, key))
        if shown is None:
            shown = presentation(route, key, None)
            if len(self._shown) >= _PRESENTATIONS_KEPT:
                self._shown.clear()  # bounded: many distinct keys only cost a rebuild
            self._shown[(route.name, key)] = shown
        return shown

    async def link(self, context: RequestContext, route: Route, ref: ObjectRef, path: str) -> Link:
        """A streamed object is fetched from the proxy itself, with the caller's token."""
        return Link(path, None)


_PRESENTATIONS_KEPT = 4096


def watch_credential(
    state: State,
    telemetry: Telemetry,
    request: web.BaseRequest,
    context: RequestContext,
    what: str,
) -> Watch | None:
    """Have the connection of this `what` ("stream", "upload") closed if its credential is
    revoked while it runs; `state.unwatch` the answer when it ends. None: nothing to revoke
    (a public route)."""
    if context.claims is None:
        return None

    def stop() -> None:
        # The next write or read fails on the closed transport; the reason set here is the
        # one logged.
        context.reason = f"credential revoked mid-{what}"
        telemetry.stream_stopped("revoked")
        if request.transport is not None:
            request.transport.abort()

    return state.watch(context.claims, stop, context.via_link)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """What every stream of one config shares: where objects come from, and how long a
    client may stop reading (limits.client_write_timeout) before its connection is cut."""

    storage: Storage
    objects: ObjectCache  # used by routes with `cache:`
    write_timeout: float = 60.0


async def stream(
    request: web.BaseRequest,
    context: RequestContext,
    ref: ObjectRef,
    shown: Presentation,
    cache: RouteCacheSettings | None,
    settings: StreamSettings,
) -> web.StreamResponse:
    """Answer from S3, or from the object cache when the route has `cache:`. What was sent
    (bytes, first byte, why it was cut short) goes on `context`."""
    if cache is not None:
        return await _from_cache(request, context, ref, shown, cache, settings)
    storage = settings.storage
    if request.method == "HEAD":
        meta = await storage.head(ref)
        _check_preconditions(request, meta, shown)
        return WireResponse(200, object_head(meta, shown), meta.content_length)
    opened = await _open_for_get(request, storage, ref, shown)
    return await send_object(request, context, opened, shown, settings.write_timeout)


def _check_preconditions(request: web.BaseRequest, meta: ObjectMeta, shown: Presentation) -> None:
    """Raise the 304 or 412 the request's preconditions call for, judged on `meta`."""
    headers = request.headers
    if not has_preconditions(headers):
        return
    status = precondition_status(request.method, headers, meta.etag, meta.last_modified)
    if status == NOT_MODIFIED:
        # RFC 9110 15.4.5: a 304 repeats the fields a cache would update from the 200.
        full = object_headers(meta, shown)
        raise NotModified({name: full[name] for name in _ON_304 if name in full})
    if status == PRECONDITION_FAILED:
        raise PreconditionFailed("precondition failed")


_ON_304 = ("ETag", "Last-Modified", "Cache-Control", "Expires", "Vary", "Content-Location")
# Up to this size, an S3 body we will not send is read to its end so its keep-alive connection
# is reused (a revalidated small object then costs no new TCP/TLS handshake); beyond it the
# connection is closed instead of reading bytes nobody wants.
_DRAIN_LIMIT = 64 * 1024


async def _open_for_get(
    request: web.BaseRequest,
    storage: Storage,
    ref: ObjectRef,
    shown: Presentation,
) -> ObjectStream:
    """GET the object from S3 and judge the preconditions on that very answer, so the
    validators are those of the bytes served. Client conditionals never go to S3.

    A request with preconditions (a browser revalidating its copy, mostly) is judged on a
    HEAD first: its 304 or 412 then costs S3 no body. Only when they pass is the object
    fetched, and judged again on the GET's own validators (it may have changed in between).

    A single Range is asked of S3 directly; with If-Range the answer's validators (the whole
    object's, also on a 206) then decide, and a mismatch costs a second, whole GET. Several
    ranges get the whole object (200), which RFC 9110 14.2 permits, unless none of them is
    satisfiable: then 416, as the cached route answers them.
    """
    headers = request.headers
    preconditions = has_preconditions(headers)  # once: most requests carry none
    ranges = parse_ranges(headers.get("Range")) if "Range" in headers else None
    if ranges == ():
        # A malformed range set: 416 with the size, unless a precondition or a stale
        # If-Range decides first (RFC 9110 13.2.2). Rare, so a HEAD finds the size.
        meta = await storage.head(ref)
        _check_preconditions(request, meta, shown)
        if if_range_holds(headers, meta.etag, meta.last_modified):
            raise RangeNotSatisfiable("malformed range", size=meta.content_length)
        ranges = None
    elif preconditions:
        _check_preconditions(request, await storage.head(ref), shown)
    byte_range = ranges[0].as_header() if ranges is not None and len(ranges) == 1 else None
    try:
        obj = await storage.get(ref, byte_range)
    except RangeNotSatisfiable:
        if not preconditions and "If-Range" not in headers:
            raise
        # S3 says 416 before we saw the validators; but preconditions and If-Range come first
        # (RFC 9110 13.2.2), so a HEAD settles them on this rare path.
        meta = await storage.head(ref)
        _check_preconditions(request, meta, shown)
        if if_range_holds(headers, meta.etag, meta.last_modified):
            raise
        byte_range = None
        obj = await storage.get(ref, None)
    while True:
        meta = obj.meta
        if preconditions:
            try:
                _check_preconditions(request, meta, shown)
            except (NotModified, PreconditionFailed):
                await _discard(obj)
                raise
        if byte_range is None or if_range_holds(headers, meta.etag, meta.last_modified):
            if _none_of_several_satisfiable(ranges, headers, meta):
                await _discard(obj)
                raise RangeNotSatisfiable("no range satisfiable", size=meta.content_length)
            return obj
        await _discard(obj)  # the client's copy is stale: it gets the whole object
        byte_range = None
        obj = await storage.get(ref, None)


def _none_of_several_satisfiable(
    ranges: tuple[ByteRange, ...] | None, headers: Mapping[str, str], meta: ObjectMeta
) -> bool:
    """Several ranges (served whole) of which none is satisfiable, and no stale If-Range
    asking for the whole object anyway: 416, as the cached route answers."""
    if ranges is None or len(ranges) < 2:
        return False
    if not if_range_holds(headers, meta.etag, meta.last_modified):
        return False
    return satisfiable_spans(ranges, meta.content_length) == []


async def _discard(obj: ObjectStream) -> None:
    """Let go of an S3 answer that will not be sent."""
    try:
        if obj.meta.content_length <= _DRAIN_LIMIT:
            async for _chunk in obj.chunks:
                pass
    except ProxyError:
        pass  # the connection is closed below; the client's answer does not depend on it
    finally:
        await obj.aclose()


async def send_object(
    request: web.BaseRequest,
    context: RequestContext,
    obj: ObjectStream,
    shown: Presentation,
    write_timeout: float,
) -> web.StreamResponse:
    """Stream an opened S3 object to the client, then release it."""
    bytes_from_s3 = 0
    try:
        meta = obj.meta
        # The head goes out with the first body bytes, in one write (wire.py): the client
        # sees it once the first bytes came from S3, which for a small object is one read.
        response = WireResponse(
            206 if meta.content_range else 200, object_head(meta, shown), meta.content_length
        )
        # Given here: the Gateway adds it to answers that have not started, and this one has.
        response.request_id = context.id
        try:
            await response.prepare(request)
        except ConnectionError:
            context.reason = "client disconnected"
            return response
        deadline = WriteDeadline(request.transport, write_timeout)
        # The relay writes past the response's own body guards: never for an answer without
        # a body (a HEAD is answered from storage.head and never gets here; kept so).
        relay = obj.relay if request.method != "HEAD" else None
        try:
            async for chunk in obj.chunks:
                bytes_from_s3 += len(chunk)
                # write() waits while the client's socket buffer is full: back-pressure keeps
                # memory bounded per stream, and the deadline frees a stalled client's slot.
                deadline.since = deadline.now()
                await response.write(chunk)
                deadline.since = None
                if deadline.expired:
                    break
                if context.first_byte is None:
                    context.first_byte = time.perf_counter()
                context.bytes_sent += len(chunk)
                if relay is not None and bytes_from_s3 < obj.meta.content_length:
                    # The head went with the first piece; a long rest goes socket to socket.
                    bytes_from_s3 += await _relay_rest(relay, request, context, deadline)
                    relay = None  # the loop then ends, or reads what was too short to relay
        except ConnectionError:
            if deadline.expired:
                context.reason = _STALLED
            elif context.reason is None:  # else the proxy closed it, and said why
                context.reason = "client disconnected"
            return response
        except Exception as exc:
            context.reason = f"upstream failed mid-stream: {getattr(exc, 'reason', exc)}"
            if request.transport is not None:
                request.transport.abort()
            return response
        finally:
            deadline.cancel()
        if deadline.expired:
            context.reason = _STALLED  # the deadline aborted the connection
            return response
        if bytes_from_s3 != obj.meta.content_length:
            context.reason = "upstream body shorter than its Content-Length"
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response
    finally:
        await obj.aclose()


_STALLED = "client stopped reading (limits.client_write_timeout)"


async def _relay_rest(
    start: Callable[[asyncio.Transport], BodyRelay | None],
    request: web.BaseRequest,
    context: RequestContext,
    deadline: WriteDeadline,
) -> int:
    """The rest of the body relayed by the engine into the client's transport (upstream.py
    rule 5); the bytes relayed, which count as sent however it ends. 0 when there was no
    rest worth relaying: the caller reads it. The task wakes only when the relay stops for
    the client: then, as a write() would, it waits for the client's buffer to drain, under
    the same write deadline."""
    transport = request.transport
    relay = start(transport) if transport is not None else None
    if relay is None:
        return 0
    try:
        while not await relay.next():
            deadline.since = deadline.now()
            await request.writer.drain()
            deadline.since = None
            if deadline.expired or cast(asyncio.Transport, transport).is_closing():
                raise ConnectionResetError("the client's connection closed")
            relay.resume()
    finally:
        context.bytes_sent += relay.relayed
        relay.close()
    return relay.relayed


class WriteDeadline:
    """limits.client_write_timeout for one stream: a write() still waiting that long after it
    began aborts the connection. One timer for the whole stream, re-armed when it fires,
    instead of a timeout scope around each chunk's write (which cost a timer, a task lookup
    and a cancel per chunk, though most writes never wait). `since` is set around each
    write; `expired` says the deadline cut the connection."""

    __slots__ = ("_loop", "_timeout", "_timer", "_transport", "expired", "since")

    def __init__(self, transport: asyncio.Transport | None, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._transport = transport
        self.since: float | None = None  # when the write in progress began (loop time)
        self.expired = False
        self._timer = self._loop.call_later(timeout, self._check)

    def now(self) -> float:
        return self._loop.time()

    def _check(self) -> None:
        since, now = self.since, self._loop.time()
        if since is not None and now - since >= self._timeout:
            self.expired = True
            if self._transport is not None:
                self._transport.abort()
            return
        wait = self._timeout if since is None else since + self._timeout - now
        self._timer = self._loop.call_later(wait, self._check)

    def cancel(self) -> None:
        self._timer.cancel()


async def _from_cache(
    request: web.BaseRequest,
    context: RequestContext,
    ref: ObjectRef,
    shown: Presentation,
    cache: RouteCacheSettings,
    settings: StreamSettings,
) -> web.StreamResponse:
    cached = settings.objects.get(ref, cache.max_age)
    if cached is not None:
        age = settings.objects.age(cached)
        return _memory_response(request, context, cached.meta, cached.body, shown, age)
    return await _fill_cache(request, context, ref, shown, cache, settings)


async def _fill_cache(
    request: web.BaseRequest,
    context: RequestContext,
    ref: ObjectRef,
    shown: Presentation,
    cache: RouteCacheSettings,
    settings: StreamSettings,
) -> web.StreamResponse:
    """A cache miss: fetch the object, keep it if it fits, and answer."""
    # Fill with an unconditional, whole-object GET; conditionals and ranges are then answered
    # from memory like any later request.
    obj = await settings.storage.get(ref, None)
    if obj.meta.content_length > cache.max_object_bytes or obj.meta.content_range:
        if request.method == "GET" and "Range" not in request.headers:
            try:
                _check_preconditions(request, obj.meta, shown)
            except (NotModified, PreconditionFailed):
                await _discard(obj)
                raise
            return await send_object(request, context, obj, shown, settings.write_timeout)
        await _discard(obj)  # too big to cache: ask S3 the client's own question
        return await stream(request, context, ref, shown, None, settings)
    try:
        body = b"".join([chunk async for chunk in obj.chunks])
    finally:
        await obj.aclose()
    if len(body) != obj.meta.content_length:
        raise UpstreamError("GetObject: body shorter than its Content-Length")
    settings.objects.put(ref, obj.meta, body)
    return _memory_response(request, context, obj.meta, body, shown)


def _memory_response(
    request: web.BaseRequest,
    context: RequestContext,
    meta: ObjectMeta,
    body: bytes,
    shown: Presentation,
    age: int | None = None,
) -> WireResponse:
    """The answer from a body in memory; `age`: seconds since the cache fetched it (None:
    fetched for this very request), sent as Age (RFC 9111 5.1), on a 304 too."""
    try:
        _check_preconditions(request, meta, shown)
    except NotModified as exc:
        if age is not None:
            exc.headers["Age"] = str(age)
        raise
    size = len(body)
    spans = _spans_to_send(request, meta, size)
    if spans is None and meta.content_range is None:
        status, payload, head = 200, body, object_head(meta, shown)
    else:
        headers = object_headers(meta, shown)
        headers.pop("Content-Range", None)
        status, payload = 200, body
        if spans is not None and len(spans) == 1:
            first, last = spans[0]
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            status, payload = 206, body[first : last + 1]
        elif spans is not None:
            status = 206
            payload, headers["Content-Type"] = _multipart(body, spans, headers["Content-Type"])
        head = WireHead(headers, shown.cors)
    context.first_byte = time.perf_counter()
    if request.method != "HEAD":
        context.bytes_sent = len(payload)
    response = WireResponse(status, head, len(payload), payload)
    response.age = age
    return response


def _spans_to_send(
    request: web.BaseRequest, meta: ObjectMeta, size: int
) -> list[tuple[int, int]] | None:
    """The byte spans a GET asks for and may have, or None for the whole object."""
    headers = request.headers
    if request.method != "GET" or "Range" not in headers:
        return None  # RFC 9110 14.2: Range is defined for GET only
    ranges = parse_ranges(headers.get("Range"))
    if ranges is None or not if_range_holds(headers, meta.etag, meta.last_modified):
        return None
    spans = satisfiable_spans(ranges, size)
    if spans == []:
        raise RangeNotSatisfiable("range not satisfiable", size=size)
    return spans


def _multipart(body: bytes, spans: list[tuple[int, int]], part_type: str) -> tuple[bytes, str]:
    """A multipart/byteranges body (RFC 9110 14.6) and its Content-Type, as nginx sends."""
    boundary = secrets.token_hex(12)
    size = len(body)
    pieces: list[bytes] = []
    for first, last in spans:
        part_head = (
            f"\r\n--{boundary}\r\nContent-Type: {part_type}\r\n"
            f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n"
        )
        pieces += (part_head.encode("latin-1", "replace"), body[first : last + 1])
    pieces.append(f"\r\n--{boundary}--\r\n".encode("latin-1"))
    return b"".join(pieces), f"multipart/byteranges; boundary={boundary}"
