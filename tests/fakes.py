"""FakeStorage: an in-memory stand-in behind the proxy's own Storage seam."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from proxy.errors import NotFound
from proxy.presign import Credentials, Lifetime
from proxy.storage import Conditions, ObjectMeta, ObjectStream


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

    async def head(self, bucket: str, key: str, conditions: Conditions) -> ObjectMeta:
        self.calls.append(("head", bucket, key))
        return self._meta(bucket, key)

    async def get(
        self, bucket: str, key: str, conditions: Conditions, byte_range: str | None
    ) -> ObjectStream:
        self.calls.append(("get", bucket, key))
        meta = self._meta(bucket, key, mid_stream=self.fail_after_bytes is not None)
        body = self.objects[(bucket, key)]
        return ObjectStream(meta=meta, chunks=self._chunks(body), _close=self._closed)

    async def credentials(self) -> Credentials:
        return self.signing_credentials

    def presign(
        self,
        credentials: Credentials,
        method: str,
        bucket: str,
        key: str,
        lifetime: Lifetime,
        overrides: Mapping[str, str] | None = None,
    ) -> str:
        self.calls.append(("presign", bucket, key))
        return (
            f"https://s3.example/{bucket}/{key}?X-Amz-Date={lifetime.signed_at}"
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
