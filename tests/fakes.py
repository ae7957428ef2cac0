"""FakeStorage: an in-memory stand-in behind the proxy's own Storage seam."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace

from proxy.conditional import parse_ranges
from proxy.errors import NotFound, RangeNotSatisfiable
from proxy.presign import Credentials, Lifetime
from proxy.request import ObjectRef
from proxy.ssec import CustomerKey
from proxy.storage import ObjectMeta, ObjectStream


@dataclass
class FakeStorage:
    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    fail_with: Exception | None = None
    fail_after_bytes: int | None = None  # raise `fail_with` mid-stream after this many bytes
    closed_streams: int = 0
    signing_credentials: Credentials = field(
        default_factory=lambda: Credentials("AKIAFAKE", "fake-secret")
    )
    bucket_problem: str | None = None  # what check_bucket answers (None: reachable)
    sse_keys: list[CustomerKey | None] = field(default_factory=list)  # per head/get, in order

    async def head(self, ref: ObjectRef) -> ObjectMeta:
        bucket, key = ref.bucket, ref.key
        self.calls.append(("head", bucket, key))
        self.sse_keys.append(ref.sse)
        return self._meta(bucket, key)

    async def get(self, ref: ObjectRef, byte_range: str | None) -> ObjectStream:
        """Answers a single range as S3 does: 206 with Content-Range, or 416 past the end."""
        bucket, key = ref.bucket, ref.key
        self.calls.append(("get", bucket, key))
        self.sse_keys.append(ref.sse)
        meta = self._meta(bucket, key, mid_stream=self.fail_after_bytes is not None)
        body = self.objects[(bucket, key)]
        ranges = parse_ranges(byte_range)
        if ranges is not None:
            span = ranges[0].span(len(body))
            if span is None:
                raise RangeNotSatisfiable("range not satisfiable", size=len(body))
            first, last = span
            body = body[first : last + 1]
            meta = replace(
                meta,
                content_length=len(body),
                content_range=f"bytes {first}-{last}/{meta.content_length}",
            )
        return ObjectStream(meta=meta, chunks=self._chunks(body), _close=self._closed)

    async def credentials(self) -> Credentials:
        return self.signing_credentials

    async def check_bucket(self, bucket: str) -> str | None:
        self.calls.append(("check_bucket", bucket, ""))
        return self.bucket_problem

    def presign(
        self,
        credentials: Credentials,
        method: str,
        ref: ObjectRef,
        lifetime: Lifetime,
        overrides: Mapping[str, str] | None = None,
    ) -> str:
        self.calls.append(("presign", ref.bucket, ref.key))
        return (
            f"https://s3.example/{ref.bucket}/{ref.key}?X-Amz-Date={lifetime.signed_at}"
            f"&X-Amz-Expires={lifetime.expires_in}"
        )

    def _meta(self, bucket: str, key: str, mid_stream: bool = False) -> ObjectMeta:
        if self.fail_with is not None and not mid_stream:
            raise self.fail_with
        if (bucket, key) not in self.objects:
            raise NotFound("no such key")
        return ObjectMeta(content_length=len(self.objects[(bucket, key)]), etag='"fake"')

    async def _chunks(self, body: bytes) -> AsyncIterator[bytes]:
        step = 1024
        for start in range(0, len(body), step):
            if self.fail_after_bytes is not None and start >= self.fail_after_bytes:
                assert self.fail_with is not None
                raise self.fail_with
            yield body[start : start + step]

    def _closed(self) -> None:
        self.closed_streams += 1
