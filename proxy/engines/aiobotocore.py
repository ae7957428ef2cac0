"""The aiobotocore engine (`s3.engine: aiobotocore`): every S3 request goes through one
aiobotocore client per process, opened at start-up and closed at exit. Presigned URLs are
still signed by presign.py (see signing.py for why).

What it offers over `builtin`: the AWS SDK's own request path (its signer, endpoint and
addressing rules, retry modes and retry quota, response parsing), for deployments that want
the SDK's behaviour or run against an S3 look-alike the built-in signer does not suit. What
it costs: more CPU per request (docs/performance.md).

Rules:
1. Every botocore answer and failure becomes the same project error, with the same reason,
   as the built-in engine gives (storage.error_for_status, storage.translate_errors).
2. A request waits at most s3.pool_timeout for one of s3.max_connections slots, then fails
   with StorageBusy (503): aiohttp's connector would otherwise queue it for as long as the
   slowest download holds its connection. A slot is held until the body is closed, and the
   client's pool has exactly that many connections, so the connector itself never waits.
3. Bodies are read in pieces of at most s3.chunk_size as the client takes them: aiohttp stops
   reading the socket while its small buffer is full, so a slow client slows the download
   instead of filling memory. A body dropped early closes its connection; one read to the
   end goes back to the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError
from botocore.loaders import create_loader

from ..config import S3Settings
from ..errors import ProxyError, StorageBusy, UpstreamError, UpstreamTimeout
from ..request import ObjectRef
from ..storage import (
    ObjectMeta,
    ObjectStream,
    bucket_problem,
    error_for_status,
    response_head_deadline,
    translate_errors,
)
from .signing import SignedByTheProxy, Signer
from .writes import LazyClient, ObjectWriter


class AiobotocoreStorage(SignedByTheProxy):
    def __init__(self, settings: S3Settings) -> None:
        self._settings = settings
        session = get_session()
        session.register_component("data_loader", _shared_loader())
        self._session = session
        self._signer = Signer(settings, session)
        self._write_client = LazyClient(settings, session)
        self._writes = ObjectWriter(settings, self._write_client)
        self._slots = _Slots(settings.max_connections, settings.pool_timeout)
        self._exits = contextlib.AsyncExitStack()
        self._client: Any = None

    async def open(self) -> None:
        settings = self._settings
        await self._signer.open()
        config = AioConfig(
            region_name=settings.region,
            signature_version="s3v4",
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            # `standard` retries 5xx, throttling and connection errors with jittered backoff;
            # total_max_attempts counts the first attempt, as s3.max_attempts does.
            retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
            max_pool_connections=settings.max_connections,
            s3={"addressing_style": settings.addressing_style},
        )
        self._client = await self._exits.enter_async_context(
            self._session.create_client("s3", endpoint_url=settings.endpoint_url, config=config)
        )

    @property
    def has_credentials(self) -> bool:
        """Whether the standard chain gave credentials at open() (for readiness checks)."""
        return self._signer.has_credentials

    async def close(self) -> None:
        await self._exits.aclose()
        self._client = None
        await self._write_client.close()

    async def head(self, ref: ObjectRef) -> ObjectMeta:
        async with self._slots.held("HeadObject"):
            answer = await self._call("HeadObject", "head_object", ref)
        return _meta(answer)

    async def get(self, ref: ObjectRef, byte_range: str | None) -> ObjectStream:
        release_slot = await self._slots.acquire("GetObject")
        try:
            extra = {"Range": byte_range} if byte_range else {}
            answer = await self._call("GetObject", "get_object", ref, **extra)
        except BaseException:
            release_slot()
            raise
        body = answer["Body"]
        chunk_size = self._settings.chunk_size

        def close() -> None:
            # aiohttp keeps the connection if the body was read to the end, else closes it.
            body.raw_stream.release()
            release_slot()

        return ObjectStream(meta=_meta(answer), chunks=_read_body(body, chunk_size), _close=close)

    async def _call(
        self,
        operation: str,
        method: str,
        ref: ObjectRef,
        **params: str | bytes,
    ) -> dict[str, Any]:
        """One client call, its answer's head within s3.first_byte_timeout and
        s3.request_timeout (botocore's retries included), with S3's error answers and
        transport failures mapped to the project's errors."""
        client = self._client
        if client is None:
            raise UpstreamError(f"{operation}: storage is not open")
        if ref.sse is not None:
            # botocore adds the key's base64 and MD5 headers and signs all three.
            params.update(SSECustomerAlgorithm="AES256", SSECustomerKey=ref.sse.key)
        call: Callable[..., Awaitable[dict[str, Any]]] = getattr(client, method)
        settings = self._settings
        with translate_errors(operation):
            try:
                async with response_head_deadline(
                    operation, settings.first_byte_timeout, settings.request_timeout
                ):
                    return await call(Bucket=ref.bucket, Key=ref.key, **params)
            except ClientError as exc:
                raise _client_error(exc, operation) from None

    async def check_bucket(self, bucket: str) -> str | None:
        """A ListObjectsV2 for no keys, as the built-in engine sends (storage.bucket_problem
        judges the answer)."""
        client = self._client
        if client is None:
            return "storage is not open"
        try:
            with translate_errors("ListObjectsV2"):
                try:
                    async with asyncio.timeout(self._settings.request_timeout):
                        await client.list_objects_v2(Bucket=bucket, MaxKeys=0)
                except ClientError as exc:
                    status, code = _status_and_code(exc)
                    return bucket_problem(status, code)
        except UpstreamTimeout:
            return "S3 did not answer in time"
        except ProxyError as exc:
            return exc.reason.removeprefix("ListObjectsV2: ")
        return None

    def pool_load(self) -> tuple[int, int]:
        """(S3 connections in use, requests waiting for one), for the metrics."""
        return self._slots.in_use, self._slots.waiting


@functools.cache
def _shared_loader() -> Any:
    """One botocore data loader per process: it caches the parsed JSON models (S3's API,
    endpoints), which take a few tenths of a second to parse for every new client otherwise
    (a test run opens hundreds)."""
    return create_loader()


class _Slots:
    """Rule 2: s3.max_connections slots, waited for at most s3.pool_timeout."""

    def __init__(self, size: int, timeout: float) -> None:
        self._free = asyncio.Semaphore(size)
        self._timeout = timeout
        self.in_use = 0
        self.waiting = 0

    async def acquire(self, operation: str) -> Callable[[], None]:
        """Take a slot; returns the function that gives it back (safe to call twice)."""
        self.waiting += 1
        try:
            async with asyncio.timeout(self._timeout):
                await self._free.acquire()
        except TimeoutError:
            raise StorageBusy(
                f"{operation}: every S3 connection busy for s3.pool_timeout (s3.max_connections)"
            ) from None
        finally:
            self.waiting -= 1
        self.in_use += 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self.in_use -= 1
                self._free.release()

        return release

    @contextlib.asynccontextmanager
    async def held(self, operation: str) -> AsyncIterator[None]:
        release = await self.acquire(operation)
        try:
            yield
        finally:
            release()


async def _read_body(body: Any, chunk_size: int) -> AsyncIterator[bytes]:
    # StreamingBody.read(n) hands over what has arrived, up to n bytes, and at the end checks
    # the length read against Content-Length (IncompleteReadError, mapped to a 502).
    with translate_errors("GetObject body"):
        while chunk := await body.read(chunk_size):
            yield chunk


def _meta(answer: Mapping[str, Any]) -> ObjectMeta:
    """From the answer's raw headers (as the built-in engine reads them), not botocore's
    parsed fields: Last-Modified stays the HTTP date S3 sent."""
    metadata = answer["ResponseMetadata"]
    headers: Mapping[str, str] = metadata["HTTPHeaders"]
    partial = metadata["HTTPStatusCode"] == 206
    return ObjectMeta(
        content_length=int(headers.get("content-length", 0)),
        content_type=headers.get("content-type"),
        etag=headers.get("etag"),
        last_modified=headers.get("last-modified"),
        content_range=headers.get("content-range") if partial else None,
        content_encoding=headers.get("content-encoding"),
        content_language=headers.get("content-language"),
    )


def _status_and_code(exc: ClientError) -> tuple[int, str]:
    """S3's status and error code; a HEAD's answer has no body, and botocore then makes its
    status the code ("404"), which the built-in engine sees as no code at all."""
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(exc.response.get("Error", {}).get("Code") or "")
    return status, "" if code == str(status) else code


def _client_error(exc: ClientError, operation: str) -> ProxyError:
    status, code = _status_and_code(exc)
    size = exc.response.get("Error", {}).get("ActualObjectSize")
    return error_for_status(status, code, operation, str(size) if size is not None else None)
