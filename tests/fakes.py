"""FakeStorage: an in-memory stand-in behind the proxy's own Storage seam (reads, presigning,
and multipart writes that bind each upload to its key as S3 does)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from proxy.conditional import parse_ranges
from proxy.errors import BadRequest, KeyExists, NotFound, RangeNotSatisfiable, UploadNotFound
from proxy.presign import Credentials, Lifetime
from proxy.request import ObjectRef
from proxy.ssec import CustomerKey
from proxy.storage import ObjectMeta, ObjectStream, UploadedPart


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
    writes: FakeWrites = field(init=False)

    def __post_init__(self) -> None:
        self.writes = FakeWrites(self)

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
        request_id: str | None = None,
    ) -> str:
        self.calls.append(("presign", ref.bucket, ref.key))
        return (
            f"https://s3.example/{ref.bucket}/{ref.key}?X-Amz-Date={lifetime.signed_at}"
            f"&X-Amz-Expires={lifetime.expires_in}"
        )

    def presign_part(
        self,
        credentials: Credentials,
        ref: ObjectRef,
        upload_id: str,
        number: int,
        content_length: int,
        lifetime: Lifetime,
    ) -> str:
        self.calls.append(("presign_part", ref.bucket, ref.key))
        return (
            f"https://s3.example/{ref.bucket}/{ref.key}?partNumber={number}&uploadId={upload_id}"
            f"&length={content_length}&X-Amz-Expires={lifetime.expires_in}"
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


@dataclass
class _Upload:
    bucket: str
    key: str
    content_type: str
    parts: dict[int, bytes] = field(default_factory=dict)


class FakeWrites:
    """Multipart uploads in memory, each bound to the key it began on (as AWS S3 binds
    them); every call is recorded in the storage's `calls`."""

    def __init__(self, storage: FakeStorage) -> None:
        self._storage = storage
        self.uploads: dict[str, _Upload] = {}
        self._ids = itertools.count(1)

    def _record(self, operation: str, ref: ObjectRef) -> None:
        self._storage.calls.append((operation, ref.bucket, ref.key))
        if self._storage.fail_with is not None:
            raise self._storage.fail_with

    def _upload(self, ref: ObjectRef, upload_id: str) -> _Upload:
        upload = self.uploads.get(upload_id)
        if upload is None or (upload.bucket, upload.key) != (ref.bucket, ref.key):
            raise UploadNotFound("no such upload")
        return upload

    async def start_multipart(self, ref: ObjectRef, content_type: str) -> str:
        self._record("CreateMultipartUpload", ref)
        upload_id = f"upload-{next(self._ids)}"
        self.uploads[upload_id] = _Upload(ref.bucket, ref.key, content_type)
        return upload_id

    async def upload_part(self, ref: ObjectRef, upload_id: str, number: int, body: bytes) -> str:
        self._record("UploadPart", ref)
        self._upload(ref, upload_id).parts[number] = body
        return _etag(body)

    async def open_uploads(self, ref: ObjectRef) -> frozenset[str]:
        self._record("ListMultipartUploads", ref)
        return frozenset(
            upload_id
            for upload_id, upload in self.uploads.items()
            if (upload.bucket, upload.key) == (ref.bucket, ref.key)
        )

    async def list_parts(self, ref: ObjectRef, upload_id: str) -> list[UploadedPart]:
        self._record("ListParts", ref)
        parts = self._upload(ref, upload_id).parts
        return [UploadedPart(n, len(parts[n]), _etag(parts[n])) for n in sorted(parts)]

    async def complete_multipart(
        self,
        ref: ObjectRef,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        overwrite: bool,
    ) -> str:
        self._record("CompleteMultipartUpload", ref)
        upload = self._upload(ref, upload_id)
        if any(_etag(upload.parts.get(n, b"\0")) != etag for n, etag in parts):
            raise BadRequest("S3 refused the part list (InvalidPart)")
        key = (ref.bucket, ref.key)
        if not overwrite and key in self._storage.objects:
            raise KeyExists("the key exists")
        body = b"".join(upload.parts[n] for n, _ in parts)
        self._storage.objects[key] = body
        del self.uploads[upload_id]
        return _etag(body)

    async def abort_multipart(self, ref: ObjectRef, upload_id: str) -> None:
        self._record("AbortMultipartUpload", ref)
        self._upload(ref, upload_id)
        del self.uploads[upload_id]


def _etag(body: bytes) -> str:
    return f'"{hashlib.md5(body).hexdigest()}"'  # noqa: S324 - S3's ETag, not security
