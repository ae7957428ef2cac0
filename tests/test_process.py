"""The proxy as a real process (`python -m proxy serve`): graceful SIGTERM, and memory that
stays bounded under many slow readers (its RSS is read from /proc, apart from moto's)."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from .conftest import HUGE_SIZE, S3Objects, config_dict, make_token

REPO = Path(__file__).resolve().parent.parent
TOKEN = make_token("root", role="admin", ttl=3600)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def serving(
    data: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = _free_port()
    data["listen"] = {**data.get("listen", {}), "host": "127.0.0.1", "port": port}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "proxy did not start"
                time.sleep(0.05)
        yield process, port
    finally:
        if process.poll() is None:
            process.terminate()  # workers, if any, stop with their supervisor
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        process.communicate(timeout=20)


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not found")


def test_sigterm_lets_in_flight_downloads_finish_then_exits_0(
    s3: S3Objects, tmp_path: Path
) -> None:
    data = config_dict(s3.endpoint, listen={"shutdown_grace": 20})
    with serving(data, tmp_path) as (process, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(
                "GET", "/admin/exports/huge.bin", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            response = conn.getresponse()
            assert response.status == 200
            received = len(response.read(1024 * 1024))
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(OSError):  # no longer accepting
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            while chunk := response.read(1024 * 1024):
                received += len(chunk)
                time.sleep(0.01)  # a slowish reader
            assert received == HUGE_SIZE
        finally:
            conn.close()
        assert process.wait(timeout=30) == 0


def test_sigterm_cuts_downloads_that_outlast_the_grace_period(
    s3: S3Objects, tmp_path: Path
) -> None:
    data = config_dict(s3.endpoint, listen={"shutdown_grace": 0.5})
    with serving(data, tmp_path) as (process, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(
                "GET", "/admin/exports/huge.bin", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            response = conn.getresponse()
            received = len(response.read(1024 * 1024))
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert process.wait(timeout=30) == 0
            assert time.monotonic() - started < 10
            try:
                while chunk := response.read(1024 * 1024):
                    received += len(chunk)
            except (http.client.IncompleteRead, ConnectionError):
                pass
            assert received < HUGE_SIZE  # cut short, and short of its Content-Length
        finally:
            conn.close()


def test_memory_stays_bounded_with_fifty_slow_readers(s3: S3Objects, tmp_path: Path) -> None:
    """50 clients each read a 48 MiB object slowly. Buffering objects would cost ~2.4 GiB; the
    proxy reads from S3 only as fast as each client takes the bytes."""
    # moto serves all 50 from this test process: give it time, this test is about memory
    data = config_dict(
        s3.endpoint,
        s3={
            "max_connections": 64,
            "read_timeout": 60,
            "first_byte_timeout": 60,
            "connect_timeout": 30,
            "request_timeout": 120,
        },
        # one address and one subject play all 50 readers: lift their fair-share caps
        limits={"max_streams_per_client": 64, "max_streams_per_subject": 64},
    )
    with serving(data, tmp_path) as (process, port):
        baseline = _rss_kib(process.pid, "VmRSS")

        async def slow_reader() -> int:
            timeout = aiohttp.ClientTimeout(total=60)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(
                    f"http://127.0.0.1:{port}/admin/exports/huge.bin",
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as response,
            ):
                assert response.status == 200
                got = 0
                for _ in range(40):  # ~2.5 MiB over ~2 s, then hang up
                    got += len(await response.content.read(64 * 1024))
                    await asyncio.sleep(0.05)
                return got

        async def run() -> list[int]:
            return await asyncio.gather(*(slow_reader() for _ in range(50)))

        received = asyncio.run(run())
        peak = _rss_kib(process.pid, "VmHWM")
    assert all(r > 0 for r in received)
    grown_mib = (peak - baseline) / 1024
    print(
        f"\nproxy RSS: baseline {baseline / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB "
        f"with 50 slow readers of a {HUGE_SIZE >> 20} MiB object"
    )
    assert grown_mib < 150, f"proxy RSS grew by {grown_mib:.0f} MiB"


def test_two_workers_share_the_port_and_stop_together(s3: S3Objects, tmp_path: Path) -> None:
    data = config_dict(s3.endpoint, listen={"workers": 2, "shutdown_grace": 5})
    with serving(data, tmp_path) as (process, port):
        children_file = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        deadline = time.monotonic() + 20
        while len(children_file.read_text().split()) < 2:
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.05)
        workers = children_file.read_text().split()
        for _ in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(
                "GET", "/admin/exports/q4.pdf", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            response = conn.getresponse()
            assert response.status == 200
            assert response.read() == s3.report
            conn.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists()


def test_a_second_instance_cannot_share_the_port(s3: S3Objects, tmp_path: Path) -> None:
    data = config_dict(s3.endpoint, listen={"workers": 2})
    with serving(data, tmp_path) as (_process, port):
        other = tmp_path / "other"
        other.mkdir()
        path = other / "config.yaml"
        path.write_text(
            yaml.safe_dump({**data, "listen": {"host": "127.0.0.1", "port": port, "workers": 2}})
        )
        second = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        assert second.returncode == 2
        assert "cannot listen on 127.0.0.1" in second.stderr
        assert "Address already in use" in second.stderr


def test_workers_that_cannot_start_stop_the_supervisor(s3: S3Objects, tmp_path: Path) -> None:
    data = config_dict(s3.endpoint, listen={"workers": 2, "host": "127.0.0.1", "port": 0})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "AWS_PROFILE": "no-such-profile"}
    env.pop("AWS_ACCESS_KEY_ID", None)
    env.pop("AWS_SECRET_ACCESS_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "worker 0 failed" in output or "worker 1 failed" in output
    assert "workers keep exiting" in output


def _scrape(port: int) -> dict[str, float]:
    """Each series' total over its labels, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(response.read().decode()):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0) + sample.value
    conn.close()
    return totals


def _workers(pid: int, count: int) -> list[str]:
    children_file = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + 20
    while len(children_file.read_text().split()) < count:
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    return children_file.read_text().split()


def _get_report(port: int, s3: S3Objects) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # a new connection each
    conn.request("GET", "/admin/exports/q4.pdf", headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == s3.report
    conn.close()


def test_metrics_of_two_workers_are_one_target_that_sums_them(
    s3: S3Objects, tmp_path: Path
) -> None:
    """Connections spread over both workers (SO_REUSEPORT: 40 of them all landing on one
    worker has odds of 2^-39); the supervisor's metrics.listen answers for both, keeps a
    killed worker's counts, and removes its private directory at exit."""
    metrics_port = _free_port()
    data = config_dict(
        s3.endpoint,
        listen={"workers": 2, "shutdown_grace": 5},
        metrics={"enabled": True, "listen": f"127.0.0.1:{metrics_port}"},
    )
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    with serving(data, tmp_path, env) as (process, port):
        workers = _workers(process.pid, 2)
        assert [p.name[:14] for p in scratch.iterdir()] == ["proxy-metrics-"]
        for _ in range(40):
            _get_report(port, s3)
        # Workers write their numbers as they count them: no wait for a sampling period. A
        # streamed answer is counted just after its last byte, so the client may be faster.
        totals = _scrape_until(metrics_port, "proxy_requests_total", 40)
        assert totals["proxy_response_body_bytes_total"] == 40 * len(s3.report)
        assert totals["proxy_s3_requests_total"] == 40
        assert totals["proxy_request_duration_seconds_count"] == 40

        os.kill(int(workers[0]), signal.SIGKILL)
        deadline = time.monotonic() + 20
        while workers[0] in _workers(process.pid, 1) or len(_workers(process.pid, 1)) < 2:
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            time.sleep(0.05)
        assert _scrape(metrics_port)["proxy_requests_total"] == 40  # counters never go back
        for _ in range(10):
            _get_report(port, s3)
        assert _scrape_until(metrics_port, "proxy_requests_total", 50)["proxy_requests_total"] == 50

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert list(scratch.iterdir()) == []


def _scrape_until(port: int, name: str, expected: float) -> dict[str, float]:
    """Scrape until `name` reaches `expected` (bounded): the last answer's count lands in
    another process just after the client has read it."""
    deadline = time.monotonic() + 10
    while (totals := _scrape(port)).get(name, 0) < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert totals.get(name) == expected, totals.get(name)
    return totals


def test_a_single_worker_serves_metrics_listen_itself(s3: S3Objects, tmp_path: Path) -> None:
    metrics_port = _free_port()
    data = config_dict(
        s3.endpoint, metrics={"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
    )
    with serving(data, tmp_path) as (_process, port):
        for _ in range(3):
            _get_report(port, s3)
        assert _scrape(metrics_port)["proxy_requests_total"] == 3
        unauthenticated = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        unauthenticated.request("GET", "/metrics")
        assert unauthenticated.getresponse().status == 404  # not on the proxy's port
        unauthenticated.close()


def test_a_taken_metrics_address_stops_serve_naming_the_key(s3: S3Objects, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        data = config_dict(s3.endpoint, metrics={"enabled": True, "listen": f"127.0.0.1:{busy}"})
        data["listen"] = {"host": "127.0.0.1", "port": _free_port()}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    assert result.returncode == 2
    assert f"metrics.listen 127.0.0.1:{busy}: Address already in use" in result.stderr


# The issue's target, 1 GiB: about 20 s against moto here. moto holds every part in this test
# process until the object is deleted; UPLOAD_RSS_MIB=256 runs a smaller one.
BIG_UPLOAD = int(os.environ.get("UPLOAD_RSS_MIB", "1024")) * 1024 * 1024


def test_memory_stays_bounded_during_a_large_streamed_upload(s3: S3Objects, tmp_path: Path) -> None:
    """A chunked PUT far larger than memory should allow goes to S3 one part at a time."""
    import boto3

    data = config_dict(s3.endpoint, s3={"read_timeout": 60, "request_timeout": 120})
    data["routes"].insert(
        0,
        {
            "name": "big-uploads",
            "match": "/big/{path:.+}",
            "bucket": "reports",
            "key": "uploads/{path}",
            "delivery": "stream",
            "access": {"claims": {"role": "admin"}},
            "methods": ["PUT"],
            "upload": {"max_bytes": 2 * BIG_UPLOAD, "content_types": ["application/*"]},
        },
    )
    piece = bytes(range(256)) * 4096  # 1 MiB
    with serving(data, tmp_path) as (process, port):
        baseline = _rss_kib(process.pid, "VmRSS")

        async def body() -> Any:
            for _ in range(BIG_UPLOAD // len(piece)):
                yield piece

        async def upload() -> tuple[int, dict[str, Any]]:
            timeout = aiohttp.ClientTimeout(total=600)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.put(
                    f"http://127.0.0.1:{port}/big/huge-upload.bin",
                    data=body(),
                    headers={
                        "Authorization": f"Bearer {TOKEN}",
                        "Content-Type": "application/octet-stream",
                    },
                ) as response,
            ):
                return response.status, await response.json()

        started = time.monotonic()
        status, answer = asyncio.run(upload())
        took = time.monotonic() - started
        peak = _rss_kib(process.pid, "VmHWM")
    assert status == 201, answer
    assert answer["size"] == BIG_UPLOAD
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    try:
        head = client.head_object(Bucket="reports", Key="uploads/huge-upload.bin")
        assert head["ContentLength"] == BIG_UPLOAD
        assert head["ETag"].endswith(f'-{BIG_UPLOAD // (8 * 1024 * 1024)}"')  # 8 MiB parts
    finally:
        client.delete_object(Bucket="reports", Key="uploads/huge-upload.bin")
    grown_mib = (peak - baseline) / 1024
    print(
        f"\nproxy RSS: baseline {baseline / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB "
        f"during a {BIG_UPLOAD >> 20} MiB chunked upload ({took:.1f} s)"
    )
    assert grown_mib < 150, f"proxy RSS grew by {grown_mib:.0f} MiB"
