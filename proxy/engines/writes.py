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
   If-Match named is gone) is PreconditionFailed; the upload decides what the client is told.
2. Each call is bounded by s3.request_timeout, and the checksums botocore would add by
   default are asked for only where S3 requires them (`when_required`): a part is sent as it
   is, without a second pass over it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from ..config import S3Settings
from ..errors import PreconditionFailed, ProxyError, UpstreamError
from ..ssec import CustomerKey
from ..storage import WriteCondition, error_for_status, translate_errors

ClientFactory = Callable[[], Awaitable[Any]]


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

    def __init__(self, settings: S3Settings, client: ClientFactory) -> None:
        self._settings = settings
        self._client = client

    async def put(
        self,
        bucket: str,
        key: str,
        body: bytes,
        content_type: str,
        condition: WriteCondition | None,
        sse: CustomerKey | None = None,
    ) -> str:
        """Store `body` at `key` in one request, if `condition` holds; its ETag."""
        params: dict[str, Any] = {"Body": body, "ContentType": content_type}
        params.update(_conditional(condition))
        answer = await self._call(
            "PutObject", "put_object", bucket, key, sse, params, condition is not None
        )
        return str(answer.get("ETag", ""))

    async def start_multipart(
        self, bucket: str, key: str, content_type: str, sse: CustomerKey | None = None
    ) -> str:
        """A new multipart upload's id."""
        answer = await self._call(
            "CreateMultipartUpload",
            "create_multipart_upload",
            bucket,
            key,
            sse,
            {"ContentType": content_type},
        )
        return str(answer["UploadId"])

    async def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: bytes,
        sse: CustomerKey | None = None,
    ) -> str:
        """Send part `number` (from 1); its ETag."""
        params = {"UploadId": upload_id, "PartNumber": number, "Body": body}
        answer = await self._call("UploadPart", "upload_part", bucket, key, sse, params)
        return str(answer["ETag"])

    async def complete_multipart(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        etags: list[str],
        condition: WriteCondition | None,
    ) -> str:
        """Join the parts (ETags in part order) into the object, if `condition` holds; its
        ETag."""
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, start=1)]
        params: dict[str, Any] = {"UploadId": upload_id, "MultipartUpload": {"Parts": parts}}
        params.update(_conditional(condition))
        answer = await self._call(
            "CompleteMultipartUpload",
            "complete_multipart_upload",
            bucket,
            key,
            None,
            params,
            condition is not None,
        )
        return str(answer.get("ETag", ""))

    async def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        """Drop the upload and every part sent so far."""
        await self._call(
            "AbortMultipartUpload",
            "abort_multipart_upload",
            bucket,
            key,
            None,
            {"UploadId": upload_id},
        )

    async def _call(
        self,
        operation: str,
        method: str,
        bucket: str,
        key: str,
        sse: CustomerKey | None,
        params: dict[str, Any],
        conditional: bool = False,
    ) -> dict[str, Any]:
        if sse is not None:
            params.update(SSECustomerAlgorithm="AES256", SSECustomerKey=sse.key)
        with translate_errors(operation):
            client = await self._client()
            call: Callable[..., Awaitable[dict[str, Any]]] = getattr(client, method)
            try:
                async with asyncio.timeout(self._settings.request_timeout):
                    return await call(Bucket=bucket, Key=key, **params)
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
    if status == 404 and code == "NoSuchUpload":
        return UpstreamError(f"{operation}: S3 lost the multipart upload")
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
