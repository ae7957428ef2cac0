"""Zero-downtime rollout: on SIGTERM the proxy marks itself draining and keeps serving for
`listen.drain_delay` seconds (load balancers stop sending meanwhile), then stops accepting and
finishes what is in flight; a second signal skips the rest of the delay."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from proxy.app import Gateway
from proxy.server import serve

from .conftest import S3Objects, bearer, build_config, config_dict, make_token
from .running import running_proxy

ADMIN = make_token("root", role="admin", ttl=3600)
SMALL = "/admin/exports/q4.pdf"


class _Announced(logging.Handler):
    """Sets an event when a log message containing `text` is emitted."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_sigterm_sets_draining_and_serves_until_a_second_signal(
    s3: S3Objects, caplog: pytest.LogCaptureFixture
) -> None:
    config = build_config(config_dict(s3.endpoint, listen={"drain_delay": 600}))
    gateway = Gateway(config)
    bound: list[int] = []
    ready = asyncio.Event()

    def on_ready(port: int) -> None:
        bound.append(port)
        ready.set()

    draining = _Announced("draining")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])  # serve() leaves SIGHUP blocked
    caplog.set_level(logging.INFO, logger="proxy.server")
    logging.getLogger("proxy.server").addHandler(draining)
    server = asyncio.create_task(serve(config, "127.0.0.1", 0, on_ready, gateway))
    try:
        await asyncio.wait_for(ready.wait(), 20)
        assert gateway.draining is False
        os.kill(os.getpid(), signal.SIGTERM)  # the handler serve() installed takes it
        await asyncio.wait_for(draining.event.wait(), 20)
        assert gateway.draining is True
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{bound[0]}{SMALL}", headers=bearer(ADMIN)) as answer,
        ):
            assert answer.status == 200  # a new connection, still served
            assert await answer.read() == s3.report
        assert not server.done()
        os.kill(os.getpid(), signal.SIGTERM)  # the second one cuts the 600 s short
        await asyncio.wait_for(server, 20)
    finally:
        logging.getLogger("proxy.server").removeHandler(draining)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if not server.done():
            server.cancel()


@pytest.mark.parametrize("workers", [1, 2])
def test_requests_succeed_during_the_drain_delay_then_the_server_exits_0(
    s3: S3Objects, tmp_path: Path, workers: int
) -> None:
    data = config_dict(s3.endpoint, listen={"drain_delay": 600, "workers": workers})
    with running_proxy(data, tmp_path) as proxy:
        assert proxy.get("/readyz", ADMIN)[0] == 200
        proxy.signal(signal.SIGTERM)
        proxy.wait_for("draining: serving on for 600 s", count=workers)
        for _ in range(5):
            # the load balancer is told to stop sending, and what it still sends is served
            assert proxy.get("/readyz", ADMIN) == (503, b'{"status": "draining"}')
            assert proxy.get(SMALL, ADMIN)[0] == 200
        assert proxy.process.poll() is None
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert proxy.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 30


def test_the_drain_delay_ends_by_itself(s3: S3Objects, tmp_path: Path) -> None:
    data = config_dict(s3.endpoint, listen={"drain_delay": 0.5})
    with running_proxy(data, tmp_path) as proxy:
        proxy.signal(signal.SIGTERM)
        assert proxy.process.wait(timeout=30) == 0
        assert "draining: serving on for 0.5 s" in proxy.output


def test_drain_delay_defaults_to_zero() -> None:
    assert build_config(config_dict()).settings.listen.drain_delay == 0


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request on a kept-alive socket; its status, headers (lower-case) and body, or
    (0, {}, b"") when the connection ended without an answer."""
    sock.sendall(request)
    reader = sock.makefile("rb")
    try:
        status_line = reader.readline()
        if not status_line:
            return 0, {}, b""
        headers: dict[str, str] = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = reader.read(int(headers.get("content-length", "0")))
    except ConnectionError:
        return 0, {}, b""
    finally:
        reader.close()
    return int(status_line.split()[1]), headers, body


def _sign_request(port: int) -> bytes:
    body = json.dumps({"paths": ["/photos/42"]}).encode()
    return (
        f"POST /_sign HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {ADMIN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _wait_until_refused(port: int) -> None:
    """Until the listening socket is closed (a new connection is refused, or reset when the
    listener closed with it still in the accept queue)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except (ConnectionRefusedError, ConnectionResetError):
            return
        time.sleep(0.01)
    pytest.fail("the port did not close")


def test_a_request_on_a_kept_alive_connection_after_sigterm_is_answered(
    s3: S3Objects, tmp_path: Path
) -> None:
    """Issue 23: with drain_delay 0, a POST /_sign sent on a reused keep-alive connection
    just after SIGTERM got no response at all. Now it is answered, saying Connection: close."""
    with running_proxy(config_dict(s3.endpoint), tmp_path) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
        with sock:
            status, headers, _ = _exchange(sock, _sign_request(proxy.port))
            assert status == 200
            assert headers.get("connection") != "close"  # kept alive
            proxy.signal(signal.SIGTERM)
            _wait_until_refused(proxy.port)  # the port is closed: shutdown is under way
            status, headers, body = _exchange(sock, _sign_request(proxy.port))
            assert status == 200, "the request was dropped without an answer"
            assert headers["connection"] == "close"
            assert "url" in json.loads(body)["results"][0]
        assert proxy.process.wait(timeout=30) == 0


def test_during_a_long_shutdown_an_idle_connection_still_answers(
    s3: S3Objects, tmp_path: Path
) -> None:
    """While a slow download holds the shutdown open, a kept-alive connection that sends a
    request is answered (before: aiohttp stopped reading it and the request met silence)."""
    data = config_dict(s3.endpoint, listen={"shutdown_grace": 60})
    with running_proxy(data, tmp_path) as proxy:
        slow = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
        idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with slow, idle:
            assert _exchange(idle, _sign_request(proxy.port))[0] == 200
            slow.sendall(
                f"GET /admin/exports/huge.bin HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {ADMIN}\r\n\r\n".encode()
            )
            assert slow.recv(12) == b"HTTP/1.1 200"  # streaming; this reader stalls
            proxy.signal(signal.SIGTERM)
            _wait_until_refused(proxy.port)
            proxy.wait_for("port closed")
            status, headers, _ = _exchange(idle, _sign_request(proxy.port))
            assert (status, headers["connection"]) == (200, "close")
            assert proxy.process.poll() is None  # the download still holds it open
            slow.shutdown(socket.SHUT_RDWR)
        assert proxy.process.wait(timeout=30) == 0


def test_responses_during_the_drain_delay_close_their_connection(
    s3: S3Objects, tmp_path: Path
) -> None:
    """Clients and load balancers move off a draining process's kept-alive connections."""
    data = config_dict(s3.endpoint, listen={"drain_delay": 600})
    with running_proxy(data, tmp_path) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
        with sock:
            assert _exchange(sock, _sign_request(proxy.port))[1].get("connection") != "close"
            proxy.signal(signal.SIGTERM)
            proxy.wait_for("draining: serving on")
            status, headers, _ = _exchange(sock, _sign_request(proxy.port))
            assert (status, headers["connection"]) == (200, "close")
            assert sock.recv(1) == b""  # and the proxy closed it
