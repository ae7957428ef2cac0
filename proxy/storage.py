"""The S3 seam: head, streamed get and presign. Every botocore/aiohttp failure is mapped here.

Nothing above this module sees a botocore exception or S3's own error text: what reaches the
client is one of the project's errors (404, 412, 416, 502, 504), and what reaches the log is a
short reason without credentials or signatures. A `Storage` protocol lets tests put a
`FakeStorage` behind the same seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, Protocol

import aiohttp
from aiobotocore.session import get_session
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    NoCredentialsError,
    ReadTimeoutError,
)

from .config import S3Settings
from .errors import (
    NotFound,
    NotModified,
    PreconditionFailed,
    RangeNotSatisfiable,
    UpstreamError,
    UpstreamTimeout,
)
from .presign import Credentials, Endpoint, Lifetime, aws_endpoint, presign_url

log = logging.getLogger("proxy.storage")


@dataclass(frozen=True)
class Conditions:
    """Client conditional headers, forwarded to S3 so it answers 304/412 itself."""

    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: datetime | None = None
    if_unmodified_since: datetime | None = None

    def as_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.if_match:
            params["IfMatch"] = self.if_match
        if self.if_none_match:
            params["IfNoneMatch"] = self.if_none_match
        # If-Modified-Since is ignored when If-None-Match is present (RFC 9110 13.1.3).
        if self.if_modified_since and not self.if_none_match:
            params["IfModifiedSince"] = self.if_modified_since
        if self.if_unmodified_since and not self.if_match:
            params["IfUnmodifiedSince"] = self.if_unmodified_since
        return params


def parse_http_date(value: str | None) -> datetime | None:
    """An invalid date is ignored, as RFC 9110 asks for conditional headers."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return parsed if parsed.tzinfo is not None else None


@dataclass(frozen=True)
class ObjectMeta:
    content_length: int
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None  # as an HTTP date
    content_range: str | None = None  # set when S3 answered a Range request with 206
    content_encoding: str | None = None
    content_language: str | None = None


@dataclass
class ObjectStream:
    meta: ObjectMeta
    chunks: AsyncIterator[bytes]
    _close: Any = field(default=None, repr=False)

    async def aclose(self) -> None:
        if self._close is not None:
            self._close()


class Storage(Protocol):
    async def head(self, bucket: str, key: str, conditions: Conditions) -> ObjectMeta: ...

    async def get(
        self, bucket: str, key: str, conditions: Conditions, byte_range: str | None
    ) -> ObjectStream: ...

    async def credentials(self) -> Credentials:
        """The current signing credentials (refreshed when temporary ones near expiry)."""
        ...

    def presign(
        self,
        credentials: Credentials,
        method: str,
        bucket: str,
        key: str,
        lifetime: Lifetime,
        overrides: Mapping[str, str] | None = None,
    ) -> str:
        """A presigned URL; pure CPU work, no S3 call."""
        ...


class CountingStorage:
    """Counts the S3 calls another Storage makes (presigning makes none)."""

    def __init__(self, inner: Storage, on_call: Any) -> None:
        self._inner = inner
        self._on_call = on_call

    async def head(self, bucket: str, key: str, conditions: Conditions) -> ObjectMeta:
        self._on_call()
        return await self._inner.head(bucket, key, conditions)

    async def get(
        self, bucket: str, key: str, conditions: Conditions, byte_range: str | None
    ) -> ObjectStream:
        self._on_call()
        return await self._inner.get(bucket, key, conditions, byte_range)

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


# Response overrides S3 accepts as query parameters of a presigned GET.
OVERRIDE_PARAMS = {
    "content-disposition": "response-content-disposition",
    "content-type": "response-content-type",
    "cache-control": "response-cache-control",
}


class S3Storage:
    """One aiobotocore client for the whole process, opened at start-up and closed at shutdown."""

    def __init__(self, settings: S3Settings) -> None:
        self._settings = settings
        self._client: Any = None
        self._credentials: Any = None
        self._stack = contextlib.AsyncExitStack()
        # Browsers may need another address than the proxy uses (e.g. a MinIO service name).
        public = (
            settings.public_endpoint_url or settings.endpoint_url or aws_endpoint(settings.region)
        )
        self._public_endpoint = Endpoint.parse(public, settings.addressing_style)

    async def open(self) -> None:
        settings = self._settings
        config = BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": settings.addressing_style},
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
            max_pool_connections=settings.max_connections,
            # The proxy passes bytes through; it neither needs nor wants botocore to hash them.
            response_checksum_validation="when_required",
            request_checksum_calculation="when_required",
        )
        session = get_session()
        self._credentials = await session.get_credentials()
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3",
                region_name=settings.region,
                endpoint_url=settings.endpoint_url,
                config=config,
            )
        )

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def head(self, bucket: str, key: str, conditions: Conditions) -> ObjectMeta:
        with _translate_errors("HeadObject"):
            async with asyncio.timeout(self._settings.request_timeout):
                response = await self._client.head_object(
                    Bucket=bucket, Key=key, **conditions.as_params()
                )
        return _meta_from(response)

    async def get(
        self, bucket: str, key: str, conditions: Conditions, byte_range: str | None
    ) -> ObjectStream:
        params = conditions.as_params()
        if byte_range:
            params["Range"] = byte_range
        with _translate_errors("GetObject"):
            async with asyncio.timeout(self._settings.request_timeout):
                response = await self._client.get_object(Bucket=bucket, Key=key, **params)
        body = response["Body"]
        return ObjectStream(
            meta=_meta_from(response),
            chunks=_read_chunks(body, self._settings.chunk_size),
            _close=body.close,
        )

    async def credentials(self) -> Credentials:
        if self._credentials is None:
            raise UpstreamError("presign: no AWS credentials found in the standard chain")
        with _translate_errors("credentials"):
            frozen = await self._credentials.get_frozen_credentials()
        expiry = getattr(self._credentials, "_expiry_time", None)  # refreshable ones only
        return Credentials(
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            token=frozen.token,
            expires_at=expiry.timestamp() if isinstance(expiry, datetime) else None,
        )

    def presign(
        self,
        credentials: Credentials,
        method: str,
        bucket: str,
        key: str,
        lifetime: Lifetime,
        overrides: Mapping[str, str] | None = None,
    ) -> str:
        params = {OVERRIDE_PARAMS[name.lower()]: value for name, value in (overrides or {}).items()}
        return presign_url(
            endpoint=self._public_endpoint,
            region=self._settings.region,
            credentials=credentials,
            method=method,
            bucket=bucket,
            key=key,
            signed_at=lifetime.signed_at,
            expires_in=lifetime.expires_in,
            params=params,
        )


async def _read_chunks(body: Any, chunk_size: int) -> AsyncIterator[bytes]:
    with _translate_errors("GetObject body"):
        async for chunk in body.iter_chunks(chunk_size):
            yield chunk


def _meta_from(response: Mapping[str, Any]) -> ObjectMeta:
    # S3's own header text is passed on as is: re-formatting botocore's parsed datetime would
    # only risk changing a validator the client compares byte for byte.
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    last_modified = headers.get("last-modified")
    if last_modified is None and response.get("LastModified") is not None:
        last_modified = format_datetime(response["LastModified"].astimezone(UTC), usegmt=True)
    return ObjectMeta(
        content_length=int(response.get("ContentLength", 0)),
        content_type=response.get("ContentType"),
        etag=response.get("ETag"),
        last_modified=last_modified,
        content_range=response.get("ContentRange"),
        content_encoding=response.get("ContentEncoding"),
        content_language=response.get("ContentLanguage"),
    )


@contextlib.contextmanager
def _translate_errors(operation: str) -> Iterator[None]:
    """Map S3 and transport failures to the project's errors, including while streaming."""
    try:
        yield
    except ClientError as exc:
        raise _from_client_error(exc, operation) from None
    except (TimeoutError, ConnectTimeoutError, ReadTimeoutError):
        raise UpstreamTimeout(f"{operation}: S3 timed out") from None
    except NoCredentialsError:
        raise UpstreamError(
            f"{operation}: no AWS credentials found in the standard chain"
        ) from None
    except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(f"{operation}: S3 unreachable ({type(exc).__name__})") from None


def _from_client_error(exc: ClientError, operation: str) -> Exception:
    error = exc.response.get("Error", {})
    metadata = exc.response.get("ResponseMetadata", {})
    status = int(metadata.get("HTTPStatusCode") or 0)
    code = str(error.get("Code", ""))
    headers = metadata.get("HTTPHeaders", {})
    if status == 304:
        validators = {
            name: headers[name.lower()]
            for name in ("ETag", "Last-Modified")
            if name.lower() in headers
        }
        return NotModified(validators)
    if status == 404 and code != "NoSuchBucket":
        return NotFound(f"{operation}: no such key")
    if status == 412:
        return PreconditionFailed(f"{operation}: precondition failed")
    if status == 416:
        size = error.get("ActualObjectSize")
        return RangeNotSatisfiable(
            f"{operation}: range not satisfiable",
            size=int(size) if str(size).isdigit() else None,
        )
    if code == "NoSuchBucket":
        return UpstreamError(f"{operation}: bucket does not exist")
    if status == 403:
        return UpstreamError(
            f"{operation}: S3 denied access (needs s3:GetObject; a missing key also "
            "answers 403 without s3:ListBucket)"
        )
    return UpstreamError(f"{operation}: S3 answered {status} {code[:64]}")
