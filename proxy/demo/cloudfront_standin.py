"""A loopback STAND-IN for a CloudFront edge, for the demo, the bench and the tests. It is
not a CDN and never for production: one process, one origin bucket, a small memory cache.

What it does as CloudFront documents it (proxy/cloudfront/verify.py, the same judge
`cloudfront explain` uses): every request must carry a signed URL or signed cookies; the key
ID must be one of the trusted keys; the signature must verify with that public key over the
canned or custom policy; the request must come before DateLessThan (after DateGreaterThan,
from IpAddress) and, for a custom policy, fall under its Resource, wildcards included. The URL
judged is the one the viewer asked for: scheme, Host and path with its query, CloudFront's own
parameters removed. A refusal is CloudFront's 403 with its XML body (AccessDenied or
MissingKey), plus an `X-Stand-In-Reason` header no real edge sends.

Then it serves the object from the origin bucket as an origin access control does: a SigV4
header-signed GET (`User-Agent: Amazon CloudFront`, so the demo's S3 counts edge fetches
apart), cached by path (CloudFront's default cache key: no query string, no cookies) for the
origin's `max-age`, else a day, with `X-Cache: Hit from cloudfront` or `Miss from cloudfront`.

What it leaves out: ranges (whole objects only), several cache behaviours (every path needs a
signature), compression, error caching, edge locations.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from yarl import URL

from ..cloudfront import VerifyingKey, from_request, verify
from ..presign import Credentials, Endpoint, sign_request

USER_AGENT = "Amazon CloudFront"
DEFAULT_TTL = 86400  # CloudFront's default TTL when the origin names none
_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-maxage|max-age)\s*=\s*(\d+)", re.IGNORECASE)
_PASSED = ("Content-Type", "ETag", "Last-Modified", "Cache-Control", "Content-Disposition")
_MESSAGES = {
    "AccessDenied": "Access denied",
    "MissingKey": "Missing Key-Pair-Id query parameter or cookie value",
}


@dataclass(frozen=True)
class EdgeOrigin:
    """The bucket behind the distribution, reached as an origin access control reaches it."""

    endpoint: str  # the S3 endpoint, e.g. the demo's moto on loopback
    bucket: str
    region: str = "us-east-1"
    credentials: Credentials = field(
        default_factory=lambda: Credentials("cloudfront-standin", "stand-in-secret")
    )


@dataclass
class _Cached:
    body: bytes
    headers: dict[str, str]
    stored_at: float
    max_age: int


class StandInEdge:
    """The stand-in's request handling. `clock` decides expiry, so tests move time."""

    def __init__(
        self,
        trusted: Mapping[str, VerifyingKey],
        origin: EdgeOrigin,
        clock: Callable[[], float] = time.time,
        cache_bytes: int = 64 * 1024 * 1024,
        cache_object_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._trusted = dict(trusted)
        self._origin = origin
        self._endpoint = Endpoint.parse(origin.endpoint, "path")
        self._clock = clock
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cache_object_bytes = cache_object_bytes
        self._session: aiohttp.ClientSession | None = None
        self.counts = {
            "requests": 0,
            "refused": 0,
            "hits": 0,
            "misses": 0,
            "not_modified": 0,
            "bytes": 0,
        }

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        app.cleanup_ctx.append(self._client)
        return app

    async def _client(self, app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        yield
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.counts["requests"] += 1
        if request.method not in ("GET", "HEAD"):
            return self._refuse("AccessDenied", "the distribution allows GET and HEAD only")
        url = f"{request.scheme}://{request.host}{request.raw_path}"
        presented = from_request(url, request.headers.get("Cookie"))
        verdict = verify(presented, self._trusted, self._clock(), request.remote)
        if not verdict.accepted:
            return self._refuse(verdict.code, verdict.refusals[0])
        path = request.raw_path.split("?", 1)[0]
        cached = self._fresh(path)
        if cached is not None:
            self.counts["hits"] += 1
            return self._answer(request, cached, "Hit")
        self.counts["misses"] += 1
        return await self._from_origin(request, path)

    def _refuse(self, code: str, reason: str) -> web.Response:
        self.counts["refused"] += 1
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><Error>'
            f"<Code>{code}</Code><Message>{_MESSAGES[code]}</Message></Error>"
        )
        headers = {"X-Stand-In-Reason": reason.encode("ascii", "replace").decode()[:300]}
        return web.Response(status=403, text=body, content_type="text/xml", headers=headers)

    def _fresh(self, path: str) -> _Cached | None:
        cached = self._cache.get(path)
        if cached is None:
            return None
        if self._clock() - cached.stored_at >= cached.max_age:
            del self._cache[path]
            return None
        self._cache.move_to_end(path)
        return cached

    def _answer(self, request: web.Request, cached: _Cached, how: str) -> web.Response:
        headers = dict(cached.headers)
        headers["X-Cache"] = f"{how} from cloudfront"
        headers["Via"] = "1.1 cloudfront-standin (a loopback stand-in for CloudFront)"
        headers["Age"] = str(max(0, int(self._clock() - cached.stored_at)))
        etag = headers.get("ETag")
        if etag is not None and request.headers.get("If-None-Match") in (etag, "*"):
            self.counts["not_modified"] += 1
            headers.pop("Content-Type", None)
            return web.Response(status=304, headers=headers)
        body = b"" if request.method == "HEAD" else cached.body
        self.counts["bytes"] += len(body)
        response = web.Response(status=200, body=body, headers=headers)
        if request.method == "HEAD":
            response.content_length = len(cached.body)
        return response

    async def _from_origin(self, request: web.Request, path: str) -> web.StreamResponse:
        if self._session is None:
            raise RuntimeError("the stand-in edge runs inside its application")
        host, target, headers = sign_request(
            endpoint=self._endpoint,
            region=self._origin.region,
            credentials=self._origin.credentials,
            method="GET",
            bucket=self._origin.bucket,
            key=unquote(path[1:]),
            now=time.time(),
        )
        headers["User-Agent"] = USER_AGENT
        url = URL(f"{self._endpoint.scheme}://{host}{target}", encoded=True)
        async with self._session.get(url, headers=headers) as answer:
            if answer.status != 200:  # S3's 403 or 404 goes to the viewer, as at the edge
                body = await answer.read()
                return web.Response(
                    status=answer.status,
                    body=body,
                    headers={"Content-Type": answer.headers.get("Content-Type", "text/xml")},
                )
            kept = {name: answer.headers[name] for name in _PASSED if name in answer.headers}
            size = answer.content_length or 0
            if size > self._cache_object_bytes:
                return await self._pass_through(request, answer, kept)
            body = await answer.read()
        cached = _Cached(body, kept, self._clock(), _max_age(kept.get("Cache-Control")))
        if cached.max_age > 0:
            self._store(path, cached)
        return self._answer(request, cached, "Miss")

    async def _pass_through(
        self, request: web.Request, answer: aiohttp.ClientResponse, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={**headers, "X-Cache": "Miss from cloudfront"})
        response.content_length = answer.content_length
        await response.prepare(request)
        if request.method == "GET":
            async for chunk in answer.content.iter_chunked(256 * 1024):
                self.counts["bytes"] += len(chunk)
                await response.write(chunk)
        await response.write_eof()
        return response

    def _store(self, path: str, cached: _Cached) -> None:
        self._cache[path] = cached
        total = sum(len(entry.body) for entry in self._cache.values())
        while total > self._cache_bytes and self._cache:
            _, dropped = self._cache.popitem(last=False)
            total -= len(dropped.body)


def _max_age(cache_control: str | None) -> int:
    """How long the edge keeps an answer: as CloudFront's default cache policy (minimum TTL
    0), never one the origin marks private, no-store or no-cache."""
    directives = (cache_control or "").lower()
    if any(word in directives for word in ("private", "no-store", "no-cache")):
        return 0
    found = _MAX_AGE.search(directives)
    return int(found.group(1)) if found else DEFAULT_TTL


class EdgeThread:
    """A stand-in edge on its own event loop in a daemon thread, for callers whose main loop
    belongs to someone else (the demo's proxy). Binds at once, so its origin is known before
    the proxy's config is written."""

    def __init__(self, edge: StandInEdge, host: str = "127.0.0.1", port: int = 0) -> None:
        self.edge = edge
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port: int = self._socket.getsockname()[1]
        self.origin = f"http://{host}:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        return self.origin

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.edge.application(), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()
        self._socket.close()
