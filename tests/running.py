"""`python -m proxy serve` as a real subprocess whose log the test can wait for.

The server's output goes to files, so that a test can wait for a log line while the server
runs (bounded polling: a subprocess offers no event to await)."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class RunningProxy:
    def __init__(self, process: subprocess.Popen[bytes], port: int, config: Path, out: Path):
        self.process = process
        self.port = port
        self.config = config
        self._out = out

    @property
    def output(self) -> str:
        return self._out.read_text(errors="replace")

    def write_config(self, data: dict[str, Any]) -> None:
        self.config.write_text(yaml.safe_dump(data))

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait_for(self, text: str, count: int = 1, timeout: float = 20) -> str:
        """The output once `text` appears in it `count` times; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            output = self.output
            if output.count(text) >= count:
                return output
            assert time.monotonic() < deadline, f"no {count} x {text!r} in:\n{output}"
            assert self.process.poll() is None, f"proxy exited; output:\n{output}"
            time.sleep(0.05)

    def get(self, path: str, token: str) -> tuple[int, bytes]:
        """One request on a new connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@contextmanager
def running_proxy(data: dict[str, Any], tmp_path: Path) -> Iterator[RunningProxy]:
    """Start the proxy with `data` (host and port filled in) and wait until it listens."""
    port = free_port()
    data["listen"] = {**data.get("listen", {}), "host": "127.0.0.1", "port": port}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "proxy.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    proxy = RunningProxy(process, port, config, out)
    try:
        proxy.wait_for("listening on", timeout=30)  # printed after the pid file is written
        yield proxy
    finally:
        if process.poll() is None:
            process.terminate()  # workers, if any, stop with their supervisor
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
