"""The S3 seam: head, streamed get and presign, and how S3's answers become the project's errors.

Nothing above this module sees a botocore exception or S3's own error text: what reaches the
client is one of the project's errors (404, 416, 502, 503, 504), and what reaches the log is
a short reason without credentials or signatures. Two engines implement the `Storage`
protocol (proxy/engines: `builtin`, the default, and `aiobotocore`), and both map S3's answers
with `error_for_status` and transport failures with `translate_errors`, so a client cannot
tell which one runs. Tests put a `FakeStorage` behind the same seam. No I/O here.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ConnectTimeoutError,
    NoCredentialsError,
    ReadTimeoutError,
)

from .errors import (
    NoFirstByte,
    NotFound,
    ProxyError,
    RangeNotSatisfiable,
    StorageBusy,
    UpstreamError,
    UpstreamTimeout,
)
from .presign import Credentials, Lifetime, PostForm
from .request import ObjectRef
from .upstream import MalformedResponse, PoolExhausted


@dataclass(frozen=True)
class ObjectMeta:
    content_length: int
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None  # as an HTTP date
    content_range: str | None = None  # set when S3 answered a Range request with 206
    content_encoding: str | None = None
    content_language: str | None = None

    @classmethod
    def of(
        cls,
        content_length: int,
        content_type: str | None,
        etag: str | None,
        last_modified: str | None,
        content_range: str | None,
        content_encoding: str | None,
        content_language: str | None,
    ) -> ObjectMeta:
        """ObjectMeta(...) with every field given, for an engine's hot path: the frozen
        dataclass's __init__ calls object.__setattr__ per field, about 12k instructions in
        all, where filling the new instance's __dict__ is about 4k (issue 26). The same
        object either way (a test compares them field by field)."""
        meta = object.__new__(cls)
        fields = meta.__dict__
        fields["content_length"] = content_length
        fields["content_type"] = content_type
        fields["etag"] = etag
        fields["last_modified"] = last_modified
        fields["content_range"] = content_range
        fields["content_encoding"] = content_encoding
        fields["content_language"] = content_language
        return meta


class BodyRelay(Protocol):
    """The rest of a body going from S3's socket to the client's transport by itself
    (upstream.py rule 5), which the stream's task only tends when it stops."""

    @property
    def relayed(self) -> int:
        """Body bytes handed to the client's transport so far."""

    async def next(self) -> bool:
        """True once the whole body went; False when paused until the client's transport
        has taken what it holds (drain it, then `resume()`). S3's failures are raised as the
        project's errors, a closed client transport as ConnectionResetError."""

    def resume(self) -> None: ...

    def close(self) -> None:
        """Done with the relay, however it ended."""


@dataclass
class ObjectStream:
    meta: ObjectMeta
    chunks: AsyncIterator[bytes]
    _close: Any = field(default=None, repr=False)
    # Offered by engines that can relay the rest of a body (after the first piece read from
    # `chunks`) into the client's transport; None from the call: read `chunks` instead.
    relay: Callable[[asyncio.Transport], BodyRelay | None] | None = field(default=None, repr=False)

    async def aclose(self) -> None:
        if self._close is not None:
            self._close()


@dataclass(frozen=True)
class UploadedPart:
    """One part S3 holds of a multipart upload in progress (ListParts)."""

    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class WriteCondition:
    """What S3 checks as it stores an object (its conditional write): that the key still
    holds the object with `etag` (If-Match), or, with `etag` None, nothing (If-None-Match: *).
    A write S3 refuses for it is PreconditionFailed."""

    etag: str | None = None


class Writes(Protocol):
    """Writing objects: one PutObject, or a multipart upload; with a `condition`, S3 stores
    the object only if it holds (see WriteCondition). The object's customer key, if any, goes
    with PutObject, CreateMultipartUpload and UploadPart. A multipart call naming an upload S3
    does not hold raises UploadNotFound."""

    async def put(
        self, ref: ObjectRef, body: bytes, content_type: str, condition: WriteCondition | None
    ) -> str: ...

    async def start_multipart(self, ref: ObjectRef, content_type: str) -> str: ...

    async def upload_part(
        self, ref: ObjectRef, upload_id: str, number: int, body: bytes
    ) -> str: ...

    async def complete_multipart(
        self,
        ref: ObjectRef,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        condition: WriteCondition | None,
    ) -> str: ...

    async def abort_multipart(self, ref: ObjectRef, upload_id: str) -> None: ...

    async def open_uploads(self, ref: ObjectRef) -> frozenset[str]:
        """The ids of the uploads in progress to exactly this key (S3's
        ListMultipartUploads: the key is checked by the proxy, not left to S3)."""
        ...

    async def list_parts(self, ref: ObjectRef, upload_id: str) -> list[UploadedPart]:
        """Every part S3 holds of the upload, in part order (all pages of ListParts)."""
        ...


class Storage(Protocol):
    @property
    def writes(self) -> Writes:
        """Uploads' S3 calls (proxy/engines/writes.py)."""
        ...

    async def head(self, ref: ObjectRef) -> ObjectMeta:
        """The object's metadata (read with its customer key, if it has one)."""
        ...

    async def get(self, ref: ObjectRef, byte_range: str | None) -> ObjectStream:
        """The object (or one byte range of it), its body read as the caller reads it."""
        ...

    async def credentials(self) -> Credentials:
        """The current signing credentials (refreshed when temporary ones near expiry)."""
        ...

    async def check_bucket(self, bucket: str) -> str | None:
        """None when `bucket` answers the current credentials; else what is wrong (no
        secrets). One cheap call, made by the readiness probe."""
        ...

    def presign(
        self,
        credentials: Credentials,
        method: str,
        ref: ObjectRef,
        lifetime: Lifetime,
        overrides: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> str:
        """A presigned URL; pure CPU work, no S3 call. A URL cannot carry a customer key
        (config allows one only on `delivery: stream` routes, which never presign).
        `request_id`: signed in as `x-request-id`, for S3's server access log."""
        ...

    def presign_put(
        self,
        credentials: Credentials,
        ref: ObjectRef,
        lifetime: Lifetime,
        content_type: str,
        content_length: int,
        preconditions: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> str:
        """A presigned PUT that signs the Content-Type and Content-Length it must be sent
        with, and `preconditions` (lower-case If-Match / If-None-Match, as S3 checks them);
        no S3 call. `request_id` as for presign."""
        ...

    def presign_post(
        self,
        credentials: Credentials,
        ref: ObjectRef,
        content_type: str,
        max_bytes: int,
        lifetime: Lifetime,
    ) -> PostForm:
        """A presigned POST form for one key; no S3 call."""
        ...

    def presign_part(
        self,
        credentials: Credentials,
        ref: ObjectRef,
        upload_id: str,
        number: int,
        content_length: int,
        lifetime: Lifetime,
    ) -> str:
        """A presigned UploadPart (PUT ?partNumber=N&uploadId=...) that signs the part's
        Content-Length; no S3 call."""
        ...


# Response overrides S3 accepts as query parameters of a presigned GET.
OVERRIDE_PARAMS = {
    "content-disposition": "response-content-disposition",
    "content-type": "response-content-type",
    "cache-control": "response-cache-control",
}


def xml_field(body: str, name: str) -> str | None:
    """One field of S3's (small) XML error document."""
    found = re.search(rf"<{name}>([^<]{{0,256}})</{name}>", body)
    return found.group(1) if found else None


def error_for_status(
    status: int, code: str, operation: str, object_size: str | None = None
) -> ProxyError:
    """The project's error for an S3 answer that is not 2xx: its status, S3's error code
    (empty for a HEAD, which has no body) and, on a 416, the ActualObjectSize S3 named."""
    if status == 404 and code != "NoSuchBucket":
        return NotFound(f"{operation}: no such key")
    if status == 416:
        return RangeNotSatisfiable(
            f"{operation}: range not satisfiable",
            size=int(object_size) if object_size and object_size.isdigit() else None,
        )
    if code == "NoSuchBucket":
        return UpstreamError(f"{operation}: bucket does not exist")
    if status == 403:
        return UpstreamError(
            f"{operation}: S3 denied access ({code[:32] or 'no code'}; needs s3:GetObject, and "
            "a missing key also answers 403 without s3:ListBucket)"
        )
    if status in (301, 307):
        return UpstreamError(f"{operation}: S3 redirected ({code[:32]}); is s3.region right?")
    return UpstreamError(f"{operation}: S3 answered {status} {code[:64]}".rstrip())


def bucket_problem(status: int, code: str) -> str | None:
    """What a ListObjectsV2 answer says about a bucket (readiness): None when it is usable.
    AccessDenied passes: the proxy needs s3:GetObject, not s3:ListBucket, and S3 checks the
    signature before saying it."""
    if status < 300 or code == "AccessDenied":
        return None
    if code == "NoSuchBucket":
        return "bucket does not exist"
    if status in (301, 307) or code == "PermanentRedirect":
        return "S3 redirected: the bucket is in another region than s3.region"
    return f"S3 answered {status} {code[:64]}".rstrip()


def response_head_deadline(
    operation: str, first_byte_timeout: float, request_timeout: float
) -> ResponseHeadDeadline:
    """Bound the wait for S3's response head, retries included, by s3.first_byte_timeout or
    s3.request_timeout, whichever ends first; both engines wrap their call in it:
    `async with response_head_deadline(...): ...`."""
    return ResponseHeadDeadline(operation, first_byte_timeout, request_timeout)


class ResponseHeadDeadline:
    """What `response_head_deadline` returns. A class rather than an
    @asynccontextmanager: that one is an async generator per S3 request, which the event
    loop registers and finalizes (issue 26)."""

    __slots__ = ("_deadline", "_first_byte_timeout", "_operation", "_request_timeout")

    def __init__(self, operation: str, first_byte_timeout: float, request_timeout: float) -> None:
        self._operation = operation
        self._first_byte_timeout = first_byte_timeout
        self._request_timeout = request_timeout
        self._deadline = asyncio.timeout(min(first_byte_timeout, request_timeout))

    async def __aenter__(self) -> None:
        await self._deadline.__aenter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:  # never swallows: an error goes on as it was, or as the timeout it was
        deadline = self._deadline
        try:
            await deadline.__aexit__(kind, exc, tb)
        except TimeoutError:
            if not deadline.expired():
                raise  # a timeout of its own (read_timeout): translate_errors says which
            raise head_timeout_error(
                self._operation, self._first_byte_timeout, self._request_timeout
            ) from None


def head_timeout_error(
    operation: str, first_byte_timeout: float, request_timeout: float
) -> UpstreamTimeout:
    """What it is when S3's response head did not come within s3.first_byte_timeout or
    s3.request_timeout, whichever is shorter (see response_head_deadline)."""
    if first_byte_timeout <= request_timeout:
        return NoFirstByte(
            f"{operation}: no response head from S3 within s3.first_byte_timeout "
            f"({first_byte_timeout:g} s)"
        )
    return UpstreamTimeout(
        f"{operation}: S3 did not answer within s3.request_timeout ({request_timeout:g} s)"
    )


def translate_errors(operation: str) -> ErrorTranslation:
    """Map transport failures to the project's errors, including while streaming:
    `with translate_errors("GetObject"): ...`."""
    return ErrorTranslation(operation)


class ErrorTranslation:
    """The context manager `translate_errors` returns. A class rather than a
    @contextmanager generator: it is entered for every S3 request and every body piece."""

    __slots__ = ("operation",)

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:  # never swallows: an error goes on as it was, or as the project's own
        if exc is not None:
            translated = translated_error(self.operation, exc)
            if translated is not None:
                raise translated from None


def translated_error(operation: str, exc: BaseException) -> ProxyError | None:
    """The project's error for a transport failure of `operation`, or None when `exc` is to
    go on as it is (one of the project's own, or not a failure of the transport). What
    translate_errors raises; a caller on a hot path uses it in an `except` clause instead of
    entering a context manager per call."""
    if not isinstance(exc, Exception) or isinstance(exc, ProxyError):
        return None
    if isinstance(exc, TimeoutError | ReadTimeoutError | ConnectTimeoutError):
        return UpstreamTimeout(f"{operation}: S3 timed out")
    if isinstance(exc, NoCredentialsError):
        return UpstreamError(f"{operation}: no AWS credentials found in the standard chain")
    if isinstance(exc, MalformedResponse):
        return UpstreamError(f"{operation}: S3 sent a malformed response")
    if isinstance(exc, PoolExhausted):
        return StorageBusy(
            f"{operation}: every S3 connection busy for s3.pool_timeout (s3.max_connections)"
        )
    if isinstance(exc, BotoCoreError | OSError | aiohttp.ClientError):
        return UpstreamError(f"{operation}: S3 unreachable ({type(exc).__name__})")
    return None
