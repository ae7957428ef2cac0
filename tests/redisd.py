"""A real redis-server (Debian's package) on loopback, started and stopped by the tests:
plain, as a replica (`--replicaof`), or as a sentinel (`redis-server sentinel.conf
--sentinel`, what Debian's redis-sentinel runs).

Redis cannot bind port 0, so a free port is picked first. Tests that need it are skipped,
with the reason, where redis-server is not installed (scripts/test.sh installs it as root).
Each server has its own directory; none persists anything, so a restart starts empty.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class RedisServer:
    """`extra`: more redis-server arguments (`--replicaof`, TLS ports and files, ...)."""

    def __init__(self, workdir: Path, extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._extra = list(extra)
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._workdir),
            *self._extra,
        ]

    def start(self) -> None:
        self._process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.command()[0]} did not start")
            time.sleep(0.02)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        self._process = None


class SentinelServer(RedisServer):
    """A sentinel watching one master as `service` (quorum 1: each sentinel may act alone),
    quick to notice a master that is gone."""

    def __init__(self, workdir: Path, master_port: int, service: str = "mymaster") -> None:
        super().__init__(workdir)
        self._config = workdir / "sentinel.conf"
        self._config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {service} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 5000\n"
        )

    def command(self) -> list[str]:
        # Sentinel rewrites its config file, so it gets one of its own.
        mode = [] if SENTINEL.endswith("redis-sentinel") else ["--sentinel"]
        return [SENTINEL, str(self._config), *mode]


# Debian's redis-sentinel package adds /usr/bin/redis-sentinel; redis-server --sentinel is the
# same program in the same mode.
SENTINEL = shutil.which("redis-sentinel") or REDIS_SERVER


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (scripts/test.sh installs it when root)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
