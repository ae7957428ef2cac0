"""Zero-downtime rollout: on SIGTERM the proxy marks itself draining and keeps serving for
`listen.drain_delay` seconds (load balancers stop sending meanwhile), then stops accepting and
finishes what is in flight; a second signal skips the rest of the delay."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
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
