"""Stream uploads: a PUT's body goes to S3 as it arrives, in bounded memory. Its rules:

1. Nothing is read before every refusal that needs no body: the caller has authorized the
   request, the type and the declared size are checked, and a HEAD has judged the client's
   preconditions and the route's `overwrite` (preconditions.py); only then is 100 Continue
   sent.
2. At most one part (`upload.part_size`) is held in memory. A body that fits in one part is
   one PutObject; a larger one is a multipart upload, its parts sent one after the other.
3. Nothing partial is left in S3: any failure after CreateMultipartUpload (a body past
   max_bytes, a stalled or vanished client, S3 refusing a part, cancellation) aborts the
   upload before the error goes on. A PutObject is atomic by itself.
4. What the HEAD judged is pinned with S3's own conditional write on PutObject and
   CompleteMultipartUpload (preconditions.py rule 2): two uploads racing for one key cannot
   both win, and a guarded edit cannot overwrite another one made meanwhile.
5. The answer is 201 Created with Location for a new object, 200 for a replaced one, each
   with the stored object's ETag and `{"path", "size", "etag"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader

from ..edge import EdgeRequest
from ..errors import (
    PayloadTooLarge,
    PreconditionFailed,
    ProxyError,
    RequestTimeout,
    UploadNotFound,
    UpstreamError,
)
from ..storage import Storage, Writes
from .preconditions import WritePlan, plan_write
from .rules import UploadTarget, check_size

log = logging.getLogger("proxy.uploads")


@dataclass(frozen=True)
class Received:
    size: int
    etag: str
    parts: int  # 0: one PutObject
    created: bool  # no object was at the key


class ClientGone(ConnectionResetError):
    """The client closed the connection (or broke the framing) before its body ended."""


async def receive(
    request: web.BaseRequest, storage: Storage, target: UploadTarget, body_timeout: float
) -> Received:
    """Store the request's body at the target (rules 1-4). `body_timeout`: the longest the
    client may send nothing (408, and the upload aborted)."""
    settings = target.settings
    declared = request.content_length
    check_size(settings, declared)
    plan = await plan_write(storage, target, request.headers, always_look=True)
    if isinstance(request, EdgeRequest):
        await request.send_continue()
    body = _Body(request.content, body_timeout, settings.max_bytes)
    first = await body.read(settings.part_size)
    try:
        if len(first) < settings.part_size or declared == len(first):
            # The whole body: one PutObject (rule 2).
            etag = await storage.writes.put(target.ref, first, target.content_type, plan.condition)
            return Received(len(first), etag, 0, not plan.replaces)
        size, etag, parts = await _multipart(storage.writes, target, body, first, plan)
    except PreconditionFailed:
        raise plan.refused() from None  # S3 refused the pinned condition (rule 4)
    return Received(size, etag, parts, not plan.replaces)


def stored(path: str, received: Received) -> web.Response:
    """Rule 5's answer to an upload stored at the proxy path `path`."""
    headers = {
        "ETag": received.etag,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if received.created:
        headers["Location"] = path
    return web.json_response(
        {"path": path, "size": received.size, "etag": received.etag},
        status=201 if received.created else 200,
        headers=headers,
    )


async def _multipart(
    writes: Writes, target: UploadTarget, body: _Body, first: bytes, plan: WritePlan
) -> tuple[int, str, int]:
    """The size, ETag and part count of a multipart upload of `first` and the rest."""
    settings = target.settings
    upload_id = await writes.start_multipart(target.ref, target.content_type)
    try:
        etags: list[str] = []
        part = first
        while part:
            etags.append(await writes.upload_part(target.ref, upload_id, len(etags) + 1, part))
            part = b"" if len(part) < settings.part_size else await body.read(settings.part_size)
        etag = await writes.complete_multipart(
            target.ref, upload_id, list(enumerate(etags, start=1)), plan.condition
        )
    except UploadNotFound:
        # The proxy began this upload a moment ago: S3 losing it is S3's failure, not a 404.
        await asyncio.shield(_abort(writes, target, upload_id))
        raise UpstreamError("S3 lost the multipart upload") from None
    except BaseException:
        # Rule 3. Shielded: a cancelled request still aborts.
        await asyncio.shield(_abort(writes, target, upload_id))
        raise
    return body.size, etag, len(etags)


async def _abort(writes: Writes, target: UploadTarget, upload_id: str) -> None:
    try:
        await writes.abort_multipart(target.ref, upload_id)
    except ProxyError as exc:
        # S3 drops an abandoned upload's parts only by a lifecycle rule (docs/uploads.md).
        log.warning("multipart upload to %s not aborted: %s", target.route, exc.reason)


class _Body:
    """The request body read in parts, counted against max_bytes, each read bounded by the
    body timeout (a client that stops sending does not hold the upload open)."""

    def __init__(self, content: StreamReader, timeout: float, max_bytes: int) -> None:
        self._content = content
        self._timeout = timeout
        self._max_bytes = max_bytes
        self.size = 0

    async def read(self, size: int) -> bytes:
        """Up to `size` bytes: fewer only at the body's end."""
        buffer = bytearray()
        while len(buffer) < size:
            with self._mapped():
                async with asyncio.timeout(self._timeout):
                    chunk = await self._content.read(size - len(buffer))
            if not chunk:
                break
            buffer += chunk
            self.size += len(chunk)
            if self.size > self._max_bytes:
                raise PayloadTooLarge(
                    "upload body grew past upload.max_bytes",
                    detail=f"at most {self._max_bytes} bytes",
                )
        return bytes(buffer)

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except TimeoutError:
            raise RequestTimeout("upload body stalled for limits.body_timeout") from None
        except (OSError, HttpProcessingError) as exc:
            raise ClientGone(f"upload body broken off ({type(exc).__name__})") from None
