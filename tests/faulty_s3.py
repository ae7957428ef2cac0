"""A fault-injecting S3 on loopback: it forwards to moto, or fails in the way a test asks.

It also judges SSE-C customer keys as S3 does, which moto does not: a GET or HEAD of a path in
`sealed` without the key it was stored with is refused (400 with no key, 403 with another).
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

MODES = ("ok", "error", "hang", "pause", "die_mid_stream", "refuse", "answer")


@dataclass
class FaultyS3:
    upstream: str
    mode: str = "ok"
    die_after: int = 256 * 1024  # bytes of body sent before dying, in die_mid_stream mode
    answer: tuple[int, str] = (403, "AccessDenied")  # status and S3 error code, in answer mode
    # In answer mode, answer only requests whose "METHOD /path?query" contains this (the
    # others go on to moto); None: answer them all.
    answer_only: str | None = None
    requests: int = 0
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # each request's, lower-case names
    sealed: dict[str, str] = field(default_factory=dict)  # path -> its customer key's MD5 (base64)
    # Methods held unanswered until close (a slow S3 for them), while others go through.
    hold: set[str] = field(default_factory=set)
    held: int = 0  # requests being held now
    url: str = ""
    _server: TestServer | None = None
    _session: aiohttp.ClientSession | None = None
    _hung: list[asyncio.Event] = field(default_factory=list)
    _resumed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # upload parts pass through
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self.url = str(self._server.make_url("")).rstrip("/")

    def pause(self) -> None:
        """A frozen S3: requests from now on get no answer until resume(), then the usual one
        (a brownout, where `hang` is an outage that never answers)."""
        self._resumed.clear()
        self.mode = "pause"

    def resume(self) -> None:
        self.mode = "ok"
        self._resumed.set()

    async def close(self) -> None:
        self._resumed.set()
        for event in self._hung:
            event.set()
        if self._session is not None:
            await self._session.close()
        if self._server is not None:
            await self._server.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.paths.append(f"{request.method} {request.path}")
        self.headers.append({name.lower(): value for name, value in request.headers.items()})
        if request.method in ("GET", "HEAD") and request.path in self.sealed:
            sent = request.headers.get("x-amz-server-side-encryption-customer-key-md5")
            if sent != self.sealed[request.path]:
                status, code = (400, "InvalidRequest") if sent is None else (403, "AccessDenied")
                xml = f"<Error><Code>{code}</Code><Message>SSE-C key</Message></Error>"
                return web.Response(status=status, text=xml, content_type="application/xml")
        if request.method in self.hold:
            event = asyncio.Event()
            self._hung.append(event)
            self.held += 1
            try:
                await event.wait()
            finally:
                self.held -= 1
            return web.Response(status=500)
        if self.mode == "refuse":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        answered = self.answer_only is None or self.answer_only in (
            f"{request.method} {request.raw_path}"
        )
        if self.mode == "error" or (self.mode == "answer" and answered):
            status, code = (500, "InternalError") if self.mode == "error" else self.answer
            xml = f"<Error><Code>{code}</Code><Message>boom</Message></Error>"
            return web.Response(status=status, text=xml, content_type="application/xml")
        if self.mode == "pause":
            await self._resumed.wait()
        if self.mode == "hang":
            event = asyncio.Event()
            self._hung.append(event)
            await event.wait()
            return web.Response(status=500)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._session.request(
            request.method,
            self.upstream + request.raw_path,
            headers=headers,
            # A file-like body: aiohttp warns of (and the suite fails on) large raw bytes.
            data=io.BytesIO(body) if (body := await request.read()) else None,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in ("transfer-encoding", "connection", "date", "server"):
                    response.headers[name] = value
            await response.prepare(request)
            sent = 0
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                if self.mode == "die_mid_stream" and sent + len(chunk) > self.die_after:
                    await response.write(chunk[: self.die_after - sent])
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
            return response
