"""A Storage that times and counts the S3 calls of another, by operation and outcome, and
remembers when S3 lately sent no response head in time (for /readyz). No I/O of its own."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from ..errors import (
    NoFirstByte,
    NotFound,
    PreconditionFailed,
    RangeNotSatisfiable,
    UpstreamTimeout,
)
from ..presign import Credentials, Lifetime, PostForm
from ..request import ObjectRef
from ..storage import ObjectMeta, ObjectStream, Storage, UploadedPart, WriteCondition, Writes
from .metrics import Telemetry

_T = TypeVar("_T")
# How far back /readyz looks for calls S3 left without a response head (s3.first_byte_timeout).
STALL_WINDOW = 60.0


class MeasuredStorage:
    def __init__(
        self, inner: Storage, telemetry: Telemetry, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._inner = inner
        self._telemetry = telemetry
        self._writes: MeasuredWrites | None = None
        self._clock = clock
        self._stalls: deque[float] = deque(maxlen=10_000)  # when each happened

    def recent_stalls(self) -> int:
        """Calls that got no response head within s3.first_byte_timeout in the last
        STALL_WINDOW seconds."""
        stalls, oldest = self._stalls, self._clock() - STALL_WINDOW
        while stalls and stalls[0] < oldest:
            stalls.popleft()
        return len(stalls)

    def _failed(self, operation: str, exc: Exception, started: float) -> None:
        self._telemetry.observe_s3(operation, _outcome(exc), time.perf_counter() - started)
        if isinstance(exc, NoFirstByte):
            self._stalls.append(self._clock())

    @property
    def writes(self) -> MeasuredWrites:
        # Made on first use: a storage that takes no uploads (a test's fake) need have none.
        if self._writes is None:
            self._writes = MeasuredWrites(self._inner.writes, self._telemetry)
        return self._writes

    async def head(self, ref: ObjectRef) -> ObjectMeta:
        started = time.perf_counter()
        try:
            meta = await self._inner.head(ref)
        except Exception as exc:
            self._failed("HeadObject", exc, started)
            raise
        self._telemetry.observe_s3("HeadObject", "ok", time.perf_counter() - started)
        return meta

    async def get(self, ref: ObjectRef, byte_range: str | None) -> ObjectStream:
        """Timed until the answer's head: the body's pace is the client's."""
        started = time.perf_counter()
        try:
            stream = await self._inner.get(ref, byte_range)
        except Exception as exc:
            self._failed("GetObject", exc, started)
            raise
        self._telemetry.observe_s3("GetObject", "ok", time.perf_counter() - started)
        return stream

    async def check_bucket(self, bucket: str) -> str | None:
        started = time.perf_counter()
        problem = await self._inner.check_bucket(bucket)
        outcome = "ok" if problem is None else "error"
        self._telemetry.observe_s3("ListObjectsV2", outcome, time.perf_counter() - started)
        return problem

    async def credentials(self) -> Credentials:
        return await self._inner.credentials()

    def presign(
        self,
        credentials: Credentials,
        method: str,
        ref: ObjectRef,
        lifetime: Lifetime,
        overrides: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> str:
        return self._inner.presign(credentials, method, ref, lifetime, overrides, request_id)

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
        return self._inner.presign_put(
            credentials, ref, lifetime, content_type, content_length, preconditions, request_id
        )

    def presign_post(
        self,
        credentials: Credentials,
        ref: ObjectRef,
        content_type: str,
        max_bytes: int,
        lifetime: Lifetime,
    ) -> PostForm:
        return self._inner.presign_post(credentials, ref, content_type, max_bytes, lifetime)

    def presign_part(
        self,
        credentials: Credentials,
        ref: ObjectRef,
        upload_id: str,
        number: int,
        content_length: int,
        lifetime: Lifetime,
    ) -> str:
        return self._inner.presign_part(
            credentials, ref, upload_id, number, content_length, lifetime
        )


class MeasuredWrites:
    """Times and counts each write call, as MeasuredStorage does the reads."""

    def __init__(self, inner: Writes, telemetry: Telemetry) -> None:
        self._inner = inner
        self._telemetry = telemetry

    async def _measure(self, operation: str, call: Awaitable[_T]) -> _T:
        started = time.perf_counter()
        try:
            result = await call
        except Exception as exc:
            self._telemetry.observe_s3(operation, _outcome(exc), time.perf_counter() - started)
            raise
        self._telemetry.observe_s3(operation, "ok", time.perf_counter() - started)
        return result

    async def put(
        self, ref: ObjectRef, body: bytes, content_type: str, condition: WriteCondition | None
    ) -> str:
        return await self._measure("PutObject", self._inner.put(ref, body, content_type, condition))

    async def start_multipart(self, ref: ObjectRef, content_type: str) -> str:
        return await self._measure(
            "CreateMultipartUpload", self._inner.start_multipart(ref, content_type)
        )

    async def upload_part(self, ref: ObjectRef, upload_id: str, number: int, body: bytes) -> str:
        return await self._measure(
            "UploadPart", self._inner.upload_part(ref, upload_id, number, body)
        )

    async def complete_multipart(
        self,
        ref: ObjectRef,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        condition: WriteCondition | None,
    ) -> str:
        return await self._measure(
            "CompleteMultipartUpload",
            self._inner.complete_multipart(ref, upload_id, parts, condition),
        )

    async def abort_multipart(self, ref: ObjectRef, upload_id: str) -> None:
        await self._measure("AbortMultipartUpload", self._inner.abort_multipart(ref, upload_id))

    async def open_uploads(self, ref: ObjectRef) -> frozenset[str]:
        return await self._measure("ListMultipartUploads", self._inner.open_uploads(ref))

    async def list_parts(self, ref: ObjectRef, upload_id: str) -> list[UploadedPart]:
        return await self._measure("ListParts", self._inner.list_parts(ref, upload_id))


def _outcome(exc: Exception) -> str:
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, RangeNotSatisfiable):
        return "range_not_satisfiable"
    if isinstance(exc, PreconditionFailed):
        return "precondition_failed"
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    return "error"
