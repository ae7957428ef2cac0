"""A Storage that times and counts the S3 calls of another, by operation and outcome. No I/O
of its own."""

from __future__ import annotations

import time
from collections.abc import Mapping

from ..errors import NotFound, RangeNotSatisfiable, UpstreamTimeout
from ..presign import Credentials, Lifetime
from ..ssec import CustomerKey
from ..storage import ObjectMeta, ObjectStream, Storage
from .metrics import Telemetry


class MeasuredStorage:
    def __init__(self, inner: Storage, telemetry: Telemetry) -> None:
        self._inner = inner
        self._telemetry = telemetry

    async def head(self, bucket: str, key: str, sse: CustomerKey | None = None) -> ObjectMeta:
        started = time.perf_counter()
        try:
            meta = await self._inner.head(bucket, key, sse)
        except Exception as exc:
            self._telemetry.observe_s3("HeadObject", _outcome(exc), time.perf_counter() - started)
            raise
        self._telemetry.observe_s3("HeadObject", "ok", time.perf_counter() - started)
        return meta

    async def get(
        self, bucket: str, key: str, byte_range: str | None, sse: CustomerKey | None = None
    ) -> ObjectStream:
        """Timed until the answer's head: the body's pace is the client's."""
        started = time.perf_counter()
        try:
            stream = await self._inner.get(bucket, key, byte_range, sse)
        except Exception as exc:
            self._telemetry.observe_s3("GetObject", _outcome(exc), time.perf_counter() - started)
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
        bucket: str,
        key: str,
        lifetime: Lifetime,
        overrides: Mapping[str, str] | None = None,
    ) -> str:
        return self._inner.presign(credentials, method, bucket, key, lifetime, overrides)


def _outcome(exc: Exception) -> str:
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, RangeNotSatisfiable):
        return "range_not_satisfiable"
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    return "error"
