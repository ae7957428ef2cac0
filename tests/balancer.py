"""A small load balancer on loopback, for tests of the proxy as a fleet: round robin over its
backends, with the health checks a real balancer makes. Test code, not the product.

A backend is sent new connections while its `GET /readyz` answers 200 (checked every
`interval` seconds; `threshold` failures in a row take it out, one success brings it back, as
a target group does) and it accepts them; one that refuses a connection is skipped for that
connection and the next backend tried, as a balancer does for a pod whose port just closed.
With no healthy backend it fails open and tries them all, as AWS's balancers do. How the
backend learns who the client is:

- `proxy-v1`, `proxy-v2`: an L4 balancer (AWS NLB, HAProxy `send-proxy`). Each client
  connection is spliced to one backend, after a PROXY protocol header naming the client; the
  balancer's own health checks say `UNKNOWN` / `LOCAL`.
- `xff`: an L7 balancer (ingress-nginx). Each request is forwarded on its own, over the
  balancer's own connections, with the client's address appended to X-Forwarded-For.
- `tcp`: a splice and nothing else: the backend sees the balancer as the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MODES = ("proxy-v1", "proxy-v2", "xff", "tcp")
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)


def proxy_header(version: int, client: tuple[str, int] | None, local: tuple[str, int]) -> bytes:
    """A PROXY protocol header for a connection from `client` (None: the balancer's own)."""
    if version == 1:
        if client is None:
            return b"PROXY UNKNOWN\r\n"
        family = "TCP6" if ":" in client[0] else "TCP4"
        return f"PROXY {family} {client[0]} {local[0]} {client[1]} {local[1]}\r\n".encode()
    if client is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    source, destination = ipaddress.ip_address(client[0]), ipaddress.ip_address(local[0])
    block = source.packed + destination.packed + struct.pack("!HH", client[1], local[1])
    family = 0x21 if source.version == 6 else 0x11
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(block)) + block


@dataclass
class Balancer:
    backends: list[tuple[str, int]]
    mode: str = "proxy-v2"
    interval: float = 0.2  # seconds between health checks of each backend
    threshold: int = 2  # failed checks in a row that take a backend out
    port: int = 0
    healthy: dict[tuple[str, int], bool] = field(default_factory=dict)
    connections: int = 0  # client connections (or, in xff mode, requests) sent on
    refused: int = 0  # connections a backend refused, each tried on the next one
    _next: int = 0
    _failures: dict[tuple[str, int], int] = field(default_factory=dict)
    _server: asyncio.base_events.Server | None = None
    _runner: web.ServerRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _checker: asyncio.Task[None] | None = None
    _splices: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> int:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        for backend in self.backends:
            self.healthy[backend] = await self._check(backend)
        self._checker = asyncio.ensure_future(self._check_forever())
        if self.mode == "xff":
            self._session = aiohttp.ClientSession(auto_decompress=False)
            self._runner = web.ServerRunner(web.Server(self._forward), handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = self._runner.addresses[0][1]
        else:
            self._server = await asyncio.start_server(self._splice, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        if self._server is not None:
            self._server.close()
        for task in list(self._splices):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _candidates(self) -> list[tuple[str, int]]:
        """Healthy backends, starting with the next in turn."""
        start = self._next % len(self.backends)
        self._next += 1
        ordered = self.backends[start:] + self.backends[:start]
        return [backend for backend in ordered if self.healthy.get(backend)] or ordered

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for backend in self.backends:
                if await self._check(backend):
                    self._failures[backend] = 0
                    self.healthy[backend] = True
                    continue
                self._failures[backend] = failures = self._failures.get(backend, 0) + 1
                if failures >= self.threshold:
                    self.healthy[backend] = False

    async def _check(self, backend: tuple[str, int]) -> bool:
        try:
            async with asyncio.timeout(2):
                reader, writer = await asyncio.open_connection(*backend)
                try:
                    if self.mode.startswith("proxy-v"):
                        writer.write(proxy_header(int(self.mode[-1]), None, backend))
                    writer.write(b"GET /readyz HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
                    status_line = await reader.readline()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return False
        return status_line.startswith(b"HTTP/1.1 200 ")

    # L4: proxy-v1, proxy-v2, tcp

    async def _splice(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._splices.add(task)
        try:
            await self._splice_to_backend(reader, writer)
        except asyncio.CancelledError:
            pass  # close() ends it: asyncio's server would log a cancelled handler as a failure
        finally:
            self._splices.discard(task)
            writer.close()

    async def _splice_to_backend(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        client = writer.get_extra_info("peername")[:2]
        for backend in self._candidates():
            try:
                up_reader, up_writer = await asyncio.open_connection(*backend)
            except OSError:
                self.refused += 1
                self.healthy[backend] = False  # until its next health check says otherwise
                continue
            break
        else:
            return  # no backend: the client's connection closes, as a balancer's would
        self.connections += 1
        try:
            if self.mode.startswith("proxy-v"):
                up_writer.write(proxy_header(int(self.mode[-1]), client, backend))
            upstream = asyncio.ensure_future(_pipe(reader, up_writer))
            # The backend closing its side ends the connection (after Connection: close).
            await _pipe(up_reader, writer)
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upstream
        finally:
            up_writer.close()

    # L7: xff

    async def _forward(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        forwarded = request.headers.get("X-Forwarded-For")
        peer = request.transport.get_extra_info("peername")[0] if request.transport else "-"
        headers["X-Forwarded-For"] = f"{forwarded}, {peer}" if forwarded else peer
        headers["X-Forwarded-Proto"] = "http"
        for backend in self._candidates():
            url = f"http://{backend[0]}:{backend[1]}{request.raw_path}"
            try:
                upstream = await self._session.request(
                    request.method, url, headers=headers, data=body, allow_redirects=False
                )
            except aiohttp.ClientConnectionError:
                self.refused += 1
                self.healthy[backend] = False
                continue
            self.connections += 1
            async with upstream:
                response = web.StreamResponse(status=upstream.status)
                for name, value in upstream.headers.items():
                    if name.lower() not in _HOP_BY_HOP | {"content-length", "date", "server"}:
                        response.headers.add(name, value)
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        return web.Response(status=502, text="no backend")


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
    except (ConnectionError, OSError):
        pass
