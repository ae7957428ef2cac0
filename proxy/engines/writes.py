"""Writes to S3 (PutObject and the multipart calls) through an aiobotocore client, for both
engines; S3's answers become the project's errors here. Reads never come this way.

Why aiobotocore for writes even under the built-in engine: writes are few and large, so the
SDK's per-request cost is noise next to the body, and its multipart and conditional-write
request shapes need not be written twice. Each engine holds one client for writes, created
on the first upload (a proxy that never takes one never pays for it) and apart from the
reads' connections, so a long upload never holds a slot a download waits for.

Rules:
1. A write's WriteCondition goes to S3 as its own conditional write: `If-Match: <etag>` or
   `If-None-Match: *` on PutObject and CompleteMultipartUpload. S3's refusal of it (412; 409
   ConditionalRequestConflict for a concurrent write; 404 NoSuchKey when the object that
   If-Match named is gone) is PreconditionFailed; the caller decides what the client is told.
2. Each call is bounded by s3.request_timeout, and the checksums botocore would add by
   default are asked for only where S3 requires them (`when_required`): a part is sent as it
   is, without a second pass over it.
3. An upload id belongs to one key. `open_uploads` asks S3 which uploads are open on the key
   (ListMultipartUploads) and compares the key itself: S3 answers ListParts, UploadPart and
   CompleteMultipartUpload by upload id, and not every S3 implementation checks that the
   key in the request is the upload's (moto and s3rver do not).
4. NoSuchUpload is UploadNotFound (404); a part list S3 refuses at completion (InvalidPart,
   InvalidPartOrder, EntityTooSmall, MalformedXML) is a 400 that leaves the upload as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from ..config import S3Settings
from ..errors import BadRequest, PreconditionFailed, ProxyError, UploadNotFound, UpstreamError
from ..request import ObjectRef
from ..ssec import CustomerKey
from ..storage import UploadedPart, WriteCondition, error_for_status, translate_errors

ClientFactory = Callable[[], Awaitable[Any]]

# S3 answers at most 1,000 parts or uploads a page; an upload has at most 10,000 parts.
PAGE = 1000
_MAX_PART_PAGES = 10
# Uploads open on one key that `open_uploads` looks through before giving up (rule 3): a
# client that opens more than this many on one key without completing or aborting them is
# told to clean up rather than costing a long walk through S3's listing on every step.
_MAX_UPLOAD_PAGES = 10
# What S3 answers a part list it cannot join (rule 4).
_PART_LIST_CODES = ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML")


def write_config(settings: S3Settings) -> AioConfig:
    """The client config both engines' writes use (rule 2)."""
    return AioConfig(
        region_name=settings.region,
        signature_version="s3v4",
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
        max_pool_connections=settings.max_connections,
        s3={"addressing_style": settings.addressing_style},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


class ObjectWriter:
    """PutObject and multipart uploads over the client `client()` returns."""

    def __init__(self, settings: S3Settings, client: ClientFactory, page: int = PAGE) -> None:
        self._settings = settings
        self._client = client
        self._page = page  # smaller in tests, to walk S3's pages without 1,000 parts

    async def put(
        self, ref: ObjectRef, body: bytes, content_type: str, condition: WriteCondition | None
    ) -> str:
        """Store `body` as the object in one request, if `condition` holds; its ETag."""
        params: dict[str, Any] = {"Body": body, "ContentType": content_type}
        params.update(_conditional(condition))
        answer = await self._call(
            "PutObject", "put_object", ref, ref.sse, params, conditional=condition is not None
        )
        return str(answer.get("ETag", ""))

    async def start_multipart(self, ref: ObjectRef, content_type: str) -> str:
        """A new multipart upload's id."""
        answer = await self._call(
            "CreateMultipartUpload",
            "create_multipart_upload",
            ref,
            ref.sse,
            {"ContentType": content_type},
        )
        return str(answer["UploadId"])

    async def upload_part(self, ref: ObjectRef, upload_id: str, number: int, body: bytes) -> str:
        """Send part `number` (from 1); its ETag."""
        params = {"UploadId": upload_id, "PartNumber": number, "Body": body}
        answer = await self._call("UploadPart", "upload_part", ref, ref.sse, params)
        return str(answer["ETag"])

    async def complete_multipart(
        self,
        ref: ObjectRef,
        upload_id: str,
        parts: Sequence[tuple[int, str]],
        condition: WriteCondition | None,
    ) -> str:
        """Join the parts ((number, ETag) in ascending order) into the object, if `condition`
        holds; its ETag. S3 wants no customer key here: the parts are encrypted already."""
        listed = [{"PartNumber": number, "ETag": etag} for number, etag in parts]
        params: dict[str, Any] = {"UploadId": upload_id, "MultipartUpload": {"Parts": listed}}
        params.update(_conditional(condition))
        answer = await self._call(
            "CompleteMultipartUpload",
            "complete_multipart_upload",
            ref,
            None,
            params,
            conditional=condition is not None,
        )
        return str(answer.get("ETag", ""))

    async def abort_multipart(self, ref: ObjectRef, upload_id: str) -> None:
        """Drop the upload and every part sent so far."""
        await self._call(
            "AbortMultipartUpload",
            "abort_multipart_upload",
            ref,
            None,
            {"UploadId": upload_id},
        )

    async def open_uploads(self, ref: ObjectRef) -> frozenset[str]:
        """The ids of the uploads open on exactly `ref`'s key (rule 3). S3 lists the uploads
        under a prefix sorted by key, so those on the key itself come first: the walk stops
        at the first longer key."""
        found: set[str] = set()
        params: dict[str, Any] = {"Prefix": ref.key, "MaxUploads": self._page}
        for _ in range(_MAX_UPLOAD_PAGES):
            answer = await self._call(
                "ListMultipartUploads", "list_multipart_uploads", ref, None, params, keyed=False
            )
            for upload in answer.get("Uploads") or ():
                if upload.get("Key") != ref.key:
                    return frozenset(found)
                found.add(str(upload.get("UploadId")))
            if not answer.get("IsTruncated"):
                return frozenset(found)
            params = {
                **params,
                "KeyMarker": answer.get("NextKeyMarker") or "",
                "UploadIdMarker": answer.get("NextUploadIdMarker") or "",
            }
        raise UpstreamError(
            f"ListMultipartUploads: over {_MAX_UPLOAD_PAGES * self._page} uploads open on one "
            "key; abort them (or let a lifecycle rule do it)"
        )

    async def list_parts(self, ref: ObjectRef, upload_id: str) -> list[UploadedPart]:
        """Every part S3 holds of the upload, page after page, in part order."""
        parts: list[UploadedPart] = []
        params: dict[str, Any] = {"UploadId": upload_id, "MaxParts": self._page}
        for _ in range(_MAX_PART_PAGES * PAGE // self._page + 1):
            answer = await self._call("ListParts", "list_parts", ref, None, params)
            parts += [
                UploadedPart(int(part["PartNumber"]), int(part["Size"]), str(part["ETag"]))
                for part in answer.get("Parts") or ()
            ]
            marker = answer.get("NextPartNumberMarker")
            if not answer.get("IsTruncated") or not marker:
                return parts
            params = {**params, "PartNumberMarker": int(marker)}
        raise UpstreamError("ListParts: S3 listed more than 10,000 parts")

    async def _call(
        self,
        operation: str,
        method: str,
        ref: ObjectRef,
        sse: CustomerKey | None,
        params: dict[str, Any],
        keyed: bool = True,  # False: a call on the bucket (ListMultipartUploads)
        conditional: bool = False,  # sent with a WriteCondition (rule 1)
    ) -> dict[str, Any]:
        if sse is not None:
            params.update(SSECustomerAlgorithm="AES256", SSECustomerKey=sse.key)
        if keyed:
            params = {"Key": ref.key, **params}
        with translate_errors(operation):
            client = await self._client()
            call: Callable[..., Awaitable[dict[str, Any]]] = getattr(client, method)
            try:
                async with asyncio.timeout(self._settings.request_timeout):
                    return await call(Bucket=ref.bucket, **params)
            except ClientError as exc:
                raise _write_error(exc, operation, conditional) from None


def _conditional(condition: WriteCondition | None) -> dict[str, str]:
    if condition is None:
        return {}
    if condition.etag is None:
        return {"IfNoneMatch": "*"}
    return {"IfMatch": condition.etag}


def _write_error(exc: ClientError, operation: str, conditional: bool) -> ProxyError:
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(exc.response.get("Error", {}).get("Code") or "")
    if (
        status == 412
        or code in ("PreconditionFailed", "ConditionalRequestConflict")
        or (conditional and status == 404 and code == "NoSuchKey")
    ):
        return PreconditionFailed(f"{operation}: S3 refused the conditional write")
    if code == "NoSuchUpload":
        return UploadNotFound(f"{operation}: S3 holds no such upload")
    if status == 400 and code in _PART_LIST_CODES:
        return BadRequest(
            f"{operation}: S3 refused the part list ({code})",
            detail="the part list does not match the uploaded parts; the upload is kept",
        )
    return error_for_status(status, code, operation)


class LazyClient:
    """An aiobotocore client created on first use and closed with its engine (the built-in
    engine's writes: it otherwise holds no SDK client)."""

    def __init__(self, settings: S3Settings, session: Any) -> None:
        self._settings = settings
        self._session = session
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._exits = contextlib.AsyncExitStack()

    async def __call__(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await self._exits.enter_async_context(
                        self._session.create_client(
                            "s3",
                            endpoint_url=self._settings.endpoint_url,
                            config=write_config(self._settings),
                        )
                    )
        return self._client

    async def close(self) -> None:
        await self._exits.aclose()
        self._client = None
