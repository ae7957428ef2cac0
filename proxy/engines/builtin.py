"""The built-in engine (`s3.engine: builtin`, the default): each request signed by presign.py
and sent over the proxy's own HTTP/1.1 keep-alive pool (upstream.py). botocore stays off the
per-request path; aiobotocore's session only supplies credentials.

Why: a small streamed object costs the proxy less in S3 round trips than in a general SDK's
per-request machinery (request objects, event hooks, response parsing); see
docs/performance.md for the figures against the `aiobotocore` engine.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import lru_cache
from typing import TypeVar

from aiobotocore.session import get_session

from ..config import S3Settings
from ..errors import ProxyError, UpstreamError
from ..presign import Credentials, Endpoint, sign_request
from ..request import ObjectRef
from ..ssec import CustomerKey
from ..storage import (
    ObjectMeta,
    ObjectStream,
    bucket_problem,
    error_for_status,
    head_timeout_error,
    translated_error,
    xml_field,
)
from ..upstream import (
    RELAY_CLIENT_GONE,
    RELAY_DONE,
    DeadlineExceeded,
    MalformedResponse,
    Origin,
    Pool,
    Relay,
    Response,
    request_head,
)
from .signing import SignedByTheProxy, Signer
from .writes import LazyClient, ObjectWriter

MAX_ERROR_BODY = 16 * 1024
_HEADS_KEPT = 1024
_T = TypeVar("_T")


class BuiltinStorage(SignedByTheProxy):
    """Reads objects over one pool of keep-alive connections, signing each request itself
    (SigV4). Opened at start-up, closed at exit."""

    def __init__(self, settings: S3Settings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock  # epoch seconds, for SigV4's X-Amz-Date
        session = get_session()
        self._signer = Signer(settings, session)
        self._write_client = LazyClient(settings, session)
        self._writes = ObjectWriter(settings, self._write_client)
        self._endpoint = self._signer.endpoint
        self._pool: Pool | None = None
        # How long a request may wait for S3's response head, retries included.
        self._head_timeout = min(settings.first_byte_timeout, settings.request_timeout)
        # Request heads signed this second with these credentials (see _head).
        self._heads: dict[
            tuple[str, str, str, CustomerKey | None, tuple[tuple[str, str], ...]],
            tuple[Origin, bytes],
        ] = {}
        self._heads_second = 0
        self._heads_credentials: Credentials | None = None

    async def open(self) -> None:
        settings = self._settings
        await self._signer.open()
        self._pool = Pool(
            max_connections=settings.max_connections,
            pool_timeout=settings.pool_timeout,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            buffer_limit=settings.chunk_size,  # bounds what one stream buffers from S3
            headers_read=_HEADERS_READ,
        )

    @property
    def has_credentials(self) -> bool:
        """Whether the standard chain gave credentials at open() (for readiness checks)."""
        return self._signer.has_credentials

    async def close(self) -> None:
        await self._write_client.close()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def head(self, ref: ObjectRef) -> ObjectMeta:
        response = await self._send("HEAD", ref, (), "HeadObject")
        response.release()
        return _meta_from_headers(response)

    async def get(self, ref: ObjectRef, byte_range: str | None) -> ObjectStream:
        unsigned = (("Range", byte_range),) if byte_range else ()
        return _Download(await self._send("GET", ref, unsigned, "GetObject"))

    async def _send(
        self,
        method: str,
        ref: ObjectRef,
        unsigned: tuple[tuple[str, str], ...],
        operation: str,
    ) -> Response:
        """Send one signed request; retry connection failures and 5xx answers while nothing
        has been sent to the client, until the response head arrives within
        s3.first_byte_timeout and s3.request_timeout. Waiting for a pooled
        connection is bounded by s3.pool_timeout and not retried (a busy pool is a 503 now,
        not later). Answers other than 2xx become the project's errors.

        Both bounds are one deadline handed to every wait on the way (the pool's slot and
        connection, the answer's head, a backoff, an error body, a credentials re-read),
        not a timer of their own; a request answered at the first attempt pays for no
        retry bookkeeping either (issue 26)."""
        pool = self._pool
        if pool is None:
            raise UpstreamError(f"{operation}: storage is not open")
        signer = self._signer
        deadline = asyncio.get_running_loop().time() + self._head_timeout
        attempt = 1
        try:
            while True:
                credentials = signer.current()  # in hand: no await
                if credentials is None:
                    credentials = await self._within(deadline, signer.credentials(operation))
                origin, head = self._head(credentials, method, ref, unsigned)
                try:
                    response = await pool.send_head(origin, method, head, deadline)
                except (ConnectionError, OSError, MalformedResponse) as exc:
                    if isinstance(exc, TimeoutError):
                        raise
                    failure: ProxyError = UpstreamError(
                        f"{operation}: S3 unreachable ({type(exc).__name__})"
                    )
                else:
                    if response.status < 300 or response.status == 206:
                        return response
                    failure = await self._refusal(response, method, operation, deadline)
                if attempt >= self._settings.max_attempts:
                    raise failure
                # Full-jitter backoff; not security relevant.
                backoff = min(2.0, 0.05 * 2**attempt) * random.random()  # noqa: S311
                await self._within(deadline, asyncio.sleep(backoff))
                attempt += 1
        except DeadlineExceeded:
            raise self._head_timeout_error(operation) from None
        except Exception as exc:
            translated = translated_error(operation, exc)
            if translated is None:
                raise
            raise translated from None

    async def _refusal(
        self, response: Response, method: str, operation: str, deadline: float
    ) -> ProxyError:
        """The error an answer other than 2xx stands for, read from its body; raised at once
        unless it is a 5xx (which is retried)."""
        body = await self._within(deadline, _error_body(response, method))
        failure = _error_from_body(response.status, body, operation)
        if response.status < 500:
            raise failure
        return failure

    @staticmethod
    async def _within(deadline: float, step: Awaitable[_T]) -> _T:
        """A step of _send other than the pool's own waits, bounded by its deadline."""
        scope = asyncio.timeout_at(deadline)
        try:
            async with scope:
                done = await step
        except TimeoutError:
            if scope.expired():
                raise DeadlineExceeded() from None
            raise
        return done

    def _head(
        self,
        credentials: Credentials,
        method: str,
        ref: ObjectRef,
        unsigned: tuple[tuple[str, str], ...],
    ) -> tuple[Origin, bytes]:
        """Where to send a request and its signed head. Heads signed in the current second
        with the current credentials are looked up by what else they depend on (the
        endpoint and region are this engine's): _signed's own memo would hash the
        credentials and the endpoint, frozen dataclasses whose hash is Python code."""
        now = int(self._clock())
        heads = self._heads
        if now != self._heads_second or credentials is not self._heads_credentials:
            heads.clear()  # SigV4 signs whole seconds: these can never be sent again
            self._heads_second, self._heads_credentials = now, credentials
        memo = (method, ref.bucket, ref.key, ref.sse, unsigned)
        found = heads.get(memo)
        if found is None:
            signed = ref.sse.headers if ref.sse is not None else None
            found = _signed(
                self._endpoint,
                self._settings.region,
                credentials,
                method,
                ref.bucket,
                ref.key,
                now,
                (),
                tuple(signed.items()) if signed else (),
                unsigned,
            )
            if len(heads) >= _HEADS_KEPT:
                heads.clear()  # bounded: many distinct objects in one second only re-sign
            heads[memo] = found
        return found

    def _head_timeout_error(self, operation: str) -> ProxyError:
        settings = self._settings
        return head_timeout_error(operation, settings.first_byte_timeout, settings.request_timeout)

    async def _request_once(
        self,
        operation: str,
        method: str,
        bucket: str,
        key: str,
        extra: Mapping[str, str],
        query: Mapping[str, str] | None = None,
        signed: Mapping[str, str] | None = None,
    ) -> Response:
        """Sign and send one request over the pool; the answer head, whatever its status.
        `signed` are x-amz-* headers sent and signed (SSE-C); `extra` are sent unsigned."""
        pool = self._pool
        if pool is None:
            raise UpstreamError("storage is not open")
        origin, head = _signed(
            self._endpoint,
            self._settings.region,
            await self._signer.credentials(operation),
            method,
            bucket,
            key,
            int(self._clock()),
            tuple(query.items()) if query else (),
            tuple(signed.items()) if signed else (),
            tuple(extra.items()),
        )
        return await pool.send_head(origin, method, head)

    async def check_bucket(self, bucket: str) -> str | None:
        """A ListObjectsV2 for no keys, sent once: it proves the endpoint answers, the bucket
        exists and S3 accepts the credentials' signature."""
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
        return bucket_problem(response.status, xml_field(body, "Code") or "")

    def pool_load(self) -> tuple[int, int]:
        """(S3 connections in use, requests waiting for one), for the metrics."""
        pool = self._pool
        return (pool.in_use, pool.waiting) if pool is not None else (0, 0)


class _Download(ObjectStream):
    """A GetObject answer: its metadata, and its body (`chunks` is the download itself),
    each piece passed on as the socket delivered it (no re-assembly copies). One object for
    the stream and its body, and a class rather than an async generator: the event loop
    registers and finalizes every async generator, a cost paid once per streamed object."""

    def __init__(self, response: Response) -> None:
        # (`relay` is ObjectStream's field: the method is given, not looked up on the class.)
        super().__init__(_meta_from_headers(response), self, response.release, self._relay)
        self._response = response

    def __aiter__(self) -> _Download:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._response.read()
        except Exception as exc:
            translated = translated_error("GetObject body", exc)
            if translated is None:
                raise
            raise translated from None
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def _relay(self, sink: asyncio.Transport) -> _Relayed | None:
        """The rest of the body straight into `sink` (upstream.py rule 5), if long enough."""
        relay = self._response.relay(sink)
        return _Relayed(relay) if relay is not None else None


class _Relayed:
    """A body relay (storage.BodyRelay) with S3's failures as the project's errors."""

    __slots__ = ("_relay",)

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    @property
    def relayed(self) -> int:
        return self._relay.relayed

    async def next(self) -> bool:
        try:
            state = await self._relay.next()
        except Exception as exc:
            translated = translated_error("GetObject body", exc)
            if translated is None:
                raise
            raise translated from None
        if state == RELAY_CLIENT_GONE:
            raise ConnectionResetError("the client's connection closed")
        return state == RELAY_DONE

    def resume(self) -> None:
        self._relay.resume()

    def close(self) -> None:
        self._relay.close()


def _meta_from_headers(response: Response) -> ObjectMeta:
    headers = response.headers
    return ObjectMeta.of(
        response.content_length or 0,
        headers.get(b"content-type"),
        headers.get(b"etag"),
        headers.get(b"last-modified"),
        headers.get(b"content-range") if response.status == 206 else None,
        headers.get(b"content-encoding"),
        headers.get(b"content-language"),
    )


# Every header _meta_from_headers reads (the pool keeps no other).
_HEADERS_READ = (
    "content-type",
    "etag",
    "last-modified",
    "content-range",
    "content-encoding",
    "content-language",
)


def _error_from_body(status: int, body: str, operation: str) -> ProxyError:
    code = xml_field(body, "Code") or ""
    return error_for_status(status, code, operation, xml_field(body, "ActualObjectSize"))


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


@lru_cache(maxsize=1024)
def _signed(
    endpoint: Endpoint,
    region: str,
    credentials: Credentials,
    method: str,
    bucket: str,
    key: str,
    signed_at: int,
    query: tuple[tuple[str, str], ...],
    signed: tuple[tuple[str, str], ...],
    unsigned: tuple[tuple[str, str], ...] = (),
) -> tuple[Origin, bytes]:
    """Where to send a request and its SigV4-signed head (`unsigned` headers, such as Range,
    sent unsigned after the signed ones). A pure function of its arguments (SigV4 signs
    whole seconds), so an object fetched again within the same second reuses the head
    instead of hashing and formatting it again (under load, most requests)."""
    host, target, headers = sign_request(
        endpoint=endpoint,
        region=region,
        credentials=credentials,
        method=method,
        bucket=bucket,
        key=key,
        now=signed_at,
        query=dict(query) if query else None,
        signed_headers=dict(signed) if signed else None,
    )
    head = request_head(method, target, host, [*headers.items(), *unsigned])
    return _origin(endpoint.scheme, host), head


@lru_cache(maxsize=256)
def _origin(scheme: str, host_header: str) -> Origin:
    """Where to connect for a Host header value: host, host:port or [v6]:port."""
    default = 443 if scheme == "https" else 80
    host, colon, port = host_header.rpartition(":")
    if not colon or not port.isdigit() or host_header.endswith("]"):
        host, port = host_header, str(default)
    return Origin(scheme, host.strip("[]"), int(port))
