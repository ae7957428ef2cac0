"""The S3 seam: head, streamed get and presign. Every botocore/aiohttp failure is mapped here.

Nothing above this module sees a botocore exception or S3's own error text: what reaches the
client is one of the project's errors (404, 416, 502, 504), and what reaches the log is a
short reason without credentials or signatures. A `Storage` protocol lets tests put a
`FakeStorage` behind the same seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    NoCredentialsError,
)

from .config import S3Settings
from .errors import (
    NotFound,
    ProxyError,
    RangeNotSatisfiable,
    StorageBusy,
    UpstreamError,
    UpstreamTimeout,
)
from .presign import Credentials, Endpoint, Lifetime, aws_endpoint, presign_url, sign_request
from .upstream import MalformedResponse, Origin, Pool, PoolExhausted, Response

log = logging.getLogger("proxy.storage")
MAX_ERROR_BODY = 16 * 1024


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
    async def head(self, bucket: str, key: str) -> ObjectMeta: ...

    async def get(self, bucket: str, key: str, byte_range: str | None) -> ObjectStream: ...

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
        bucket: str,
        key: str,
        lifetime: Lifetime,
        overrides: Mapping[str, str] | None = None,
    ) -> str:
        """A presigned URL; pure CPU work, no S3 call."""
        ...


# Response overrides S3 accepts as query parameters of a presigned GET.
OVERRIDE_PARAMS = {
    "content-disposition": "response-content-disposition",
    "content-type": "response-content-type",
    "cache-control": "response-cache-control",
}


class S3Storage:
    """Reads objects over one pool of keep-alive connections (upstream.py), signing each
    request itself (SigV4), so botocore stays off the per-request path; aiobotocore's session
    supplies credentials from the standard AWS chain (and refreshes temporary ones). Opened at
    start-up, closed at exit.
    """

    def __init__(self, settings: S3Settings) -> None:
        self._settings = settings
        self._credentials: Any = None
        self._frozen: Credentials | None = None
        self._reread_at = 0.0
        self._pool: Pool | None = None
        internal = settings.endpoint_url or aws_endpoint(settings.region)
        self._endpoint = Endpoint.parse(internal, settings.addressing_style)
        # Browsers may need another address than the proxy uses (e.g. a MinIO service name).
        public = settings.public_endpoint_url or internal
        self._public_endpoint = Endpoint.parse(public, settings.addressing_style)

    async def open(self) -> None:
        settings = self._settings
        self._credentials = await get_session().get_credentials()
        if self._credentials is None:
            # Said once at start-up, not only as a 502 on each request that needs S3.
            log.warning(
                "no AWS credentials found: streaming (GetObject, HeadObject) and signing "
                "redirect URLs will fail with 502. Provide them through the standard chain "
                "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in AWS_PROFILE, or an "
                "instance or task role), then restart the proxy"
            )
        self._pool = Pool(
            max_connections=settings.max_connections,
            pool_timeout=settings.pool_timeout,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            buffer_limit=settings.chunk_size,  # bounds what one stream buffers from S3
        )

    @property
    def has_credentials(self) -> bool:
        """Whether the standard chain gave credentials at open() (for readiness checks)."""
        return self._credentials is not None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        response = await self._send("HEAD", bucket, key, {}, "HeadObject")
        response.release()
        return _meta_from_headers(response)

    async def get(self, bucket: str, key: str, byte_range: str | None) -> ObjectStream:
        headers = {"Range": byte_range} if byte_range else {}
        response = await self._send("GET", bucket, key, headers, "GetObject")
        return ObjectStream(
            meta=_meta_from_headers(response),
            chunks=_read_chunks(response),
            _close=response.release,  # keeps the connection only if the body was read to the end
        )

    async def _send(
        self, method: str, bucket: str, key: str, extra: dict[str, str], operation: str
    ) -> Response:
        """Send one signed request; retry connection failures and 5xx answers while nothing
        has been sent to the client, within s3.request_timeout. Waiting for a pooled
        connection is bounded by s3.pool_timeout and not retried (a busy pool is a 503 now,
        not later). Answers other than 2xx become the project's errors."""
        pool = self._pool
        if pool is None:
            raise UpstreamError(f"{operation}: storage is not open")
        settings = self._settings
        failure: Exception | None = None
        with _translate_errors(operation):
            async with asyncio.timeout(settings.request_timeout):
                for attempt in range(settings.max_attempts):
                    if attempt:
                        # Full-jitter backoff; not security relevant.
                        backoff = min(2.0, 0.05 * 2**attempt) * random.random()  # noqa: S311
                        await asyncio.sleep(backoff)
                    try:
                        response = await self._request_once(operation, method, bucket, key, extra)
                    except (ConnectionError, OSError, MalformedResponse) as exc:
                        if isinstance(exc, TimeoutError):
                            raise
                        failure = UpstreamError(
                            f"{operation}: S3 unreachable ({type(exc).__name__})"
                        )
                        continue
                    if response.status < 300 or response.status == 206:
                        return response
                    body = await _error_body(response, method)
                    failure = _from_status(response.status, body, operation)
                    if response.status < 500:
                        raise failure
        raise failure or UpstreamError(f"{operation}: S3 unreachable")

    async def _request_once(
        self,
        operation: str,
        method: str,
        bucket: str,
        key: str,
        extra: Mapping[str, str],
        query: Mapping[str, str] | None = None,
    ) -> Response:
        """Sign and send one request over the pool; the answer head, whatever its status."""
        pool = self._pool
        if pool is None:
            raise UpstreamError("storage is not open")
        host, target, headers = sign_request(
            endpoint=self._endpoint,
            region=self._settings.region,
            credentials=await self._current_credentials(operation),
            method=method,
            bucket=bucket,
            key=key,
            now=time.time(),
            query=query,
        )
        headers.update(extra)
        return await pool.request(
            _origin(self._endpoint.scheme, host), method, target, host, list(headers.items())
        )

    async def check_bucket(self, bucket: str) -> str | None:
        """A ListObjectsV2 for no keys, sent once: it proves the endpoint answers, the bucket
        exists and S3 accepts the credentials' signature. AccessDenied passes: the proxy
        needs s3:GetObject, not s3:ListBucket, and S3 checks the signature before saying
        it."""
        try:
            response = await self._request_once(
                "ListObjectsV2", "GET", bucket, "", {}, {"list-type": "2", "max-keys": "0"}
            )
            body = await _error_body(response, "GET")  # small either way; releases it
        except ProxyError as exc:
            return exc.reason
        except TimeoutError:
            return "S3 did not answer in time"
        except (ConnectionError, OSError, MalformedResponse) as exc:
            return f"S3 unreachable ({type(exc).__name__})"
        code = _xml_field(body, "Code") or ""
        if response.status < 300 or code == "AccessDenied":
            return None
        if code == "NoSuchBucket":
            return "bucket does not exist"
        if response.status in (301, 307) or code == "PermanentRedirect":
            return "S3 redirected: the bucket is in another region than s3.region"
        return f"S3 answered {response.status} {code[:64]}".rstrip()

    def pool_load(self) -> tuple[int, int]:
        """(S3 connections in use, requests waiting for one), for the metrics."""
        pool = self._pool
        return (pool.in_use, pool.waiting) if pool is not None else (0, 0)

    async def credentials(self) -> Credentials:
        return await self._current_credentials("presign")

    async def _current_credentials(self, operation: str) -> Credentials:
        """Credentials for `operation` (named in the error when there are none)."""
        # Static keys are read once; temporary ones are re-read every 30 s so that a refresh
        # by aiobotocore (ahead of their expiry) is picked up.
        cached = self._frozen
        if cached is not None and (cached.expires_at is None or time.time() < self._reread_at):
            return cached
        fresh = await self._read_credentials(operation)
        self._frozen, self._reread_at = fresh, time.time() + 30
        return fresh

    async def _read_credentials(self, operation: str) -> Credentials:
        if self._credentials is None:
            raise UpstreamError(f"{operation}: no AWS credentials found in the standard chain")
        with _translate_errors(f"{operation} credentials"):
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


async def _read_chunks(response: Response) -> AsyncIterator[bytes]:
    # Each piece is passed on as the socket delivered it: no re-assembly copies.
    with _translate_errors("GetObject body"):
        while chunk := await response.read():
            yield chunk


def _meta_from_headers(response: Response) -> ObjectMeta:
    headers = response.headers
    return ObjectMeta(
        content_length=int(headers.get("content-length", 0)),
        content_type=headers.get("content-type"),
        etag=headers.get("etag"),
        last_modified=headers.get("last-modified"),
        content_range=headers.get("content-range") if response.status == 206 else None,
        content_encoding=headers.get("content-encoding"),
        content_language=headers.get("content-language"),
    )


async def _error_body(response: Response, method: str) -> str:
    """S3's error document (small XML), read and the connection released."""
    parts: list[bytes] = []
    size = 0
    try:
        while method != "HEAD" and size < MAX_ERROR_BODY and (chunk := await response.read()):
            parts.append(chunk)
            size += len(chunk)
    except (ConnectionError, OSError, TimeoutError, MalformedResponse):
        pass
    finally:
        response.release()
    return b"".join(parts)[:MAX_ERROR_BODY].decode("utf-8", "replace")


@lru_cache(maxsize=256)
def _origin(scheme: str, host_header: str) -> Origin:
    """Where to connect for a Host header value: host, host:port or [v6]:port."""
    default = 443 if scheme == "https" else 80
    host, colon, port = host_header.rpartition(":")
    if not colon or not port.isdigit() or host_header.endswith("]"):
        host, port = host_header, str(default)
    return Origin(scheme, host.strip("[]"), int(port))


def _xml_field(body: str, name: str) -> str | None:
    found = re.search(rf"<{name}>([^<]{{0,256}})</{name}>", body)
    return found.group(1) if found else None


@contextlib.contextmanager
def _translate_errors(operation: str) -> Iterator[None]:
    """Map transport failures to the project's errors, including while streaming."""
    try:
        yield
    except ProxyError:
        raise
    except TimeoutError:
        raise UpstreamTimeout(f"{operation}: S3 timed out") from None
    except NoCredentialsError:
        raise UpstreamError(
            f"{operation}: no AWS credentials found in the standard chain"
        ) from None
    except MalformedResponse:
        raise UpstreamError(f"{operation}: S3 sent a malformed response") from None
    except PoolExhausted:
        raise StorageBusy(
            f"{operation}: every S3 connection busy for s3.pool_timeout (s3.max_connections)"
        ) from None
    except (BotoCoreError, OSError) as exc:
        raise UpstreamError(f"{operation}: S3 unreachable ({type(exc).__name__})") from None


def _from_status(status: int, body: str, operation: str) -> Exception:
    code = _xml_field(body, "Code") or ""
    if status == 404 and code != "NoSuchBucket":
        return NotFound(f"{operation}: no such key")
    if status == 416:
        size = _xml_field(body, "ActualObjectSize")
        return RangeNotSatisfiable(
            f"{operation}: range not satisfiable",
            size=int(size) if size and size.isdigit() else None,
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
    return UpstreamError(f"{operation}: S3 answered {status} {code[:64]}")
