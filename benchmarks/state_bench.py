"""What shared state costs per request: revocation checks, rate limits and stream slots on
`state.backend: redis` against `memory`, in one session on one machine.

    .venv/bin/python benchmarks/state_bench.py [--out PATH] [--calls N]

Starts Debian's redis-server on a free loopback port (apt-get install redis-server) and
stops it at the end. Calls the proxy's own State objects in-process, as a request would:
the figures are the state's cost alone, not a whole request's. Sequential calls give the
latency one request adds; 64 concurrent callers give what one process can push through.
Not a pass/fail test: the report (Markdown, stdout and --out) gives figures and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.config import RateSettings, parse_config  # noqa: E402
from proxy.state import Bucket, State, create_state, new_revocation  # noqa: E402

SECRET = "bench-secret-" + "x" * 40
CONCURRENCY = 64


def _config(backend: str, url: str | None) -> object:
    data = {
        "auth": {"secret": SECRET},
        "state": {"backend": backend, **({"url": url} if url else {})},
        "limits": {"max_streams_per_client": 10**6, "max_streams_per_subject": 10**6},
        "routes": [
            {
                "name": "r",
                "match": "/r/{k}",
                "bucket": "bench",
                "key": "{k}",
                "delivery": "stream",
                "access": "authenticated",
            }
        ],
    }
    return parse_config(yaml.safe_dump(data), env={})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("state_bench: needs redis-server (apt-get install redis-server)")
    port = _free_port()
    process = subprocess.Popen(  # noqa: S603 - argv built here, never a shell string
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                sys.exit("state_bench: redis-server did not start")
            time.sleep(0.02)


async def _sequential(call: Callable[[int], Awaitable[None]], calls: int) -> float:
    """Mean microseconds per call, one at a time."""
    for i in range(min(calls // 10, 1000)):  # warm up
        await call(i)
    started = time.perf_counter()
    for i in range(calls):
        await call(i)
    return (time.perf_counter() - started) / calls * 1e6


async def _concurrent(call: Callable[[int], Awaitable[None]], calls: int) -> float:
    """Calls per second with CONCURRENCY callers."""
    each = max(1, calls // CONCURRENCY)

    async def worker(n: int) -> None:
        for i in range(each):
            await call(n * each + i)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(CONCURRENCY)))
    return each * CONCURRENCY / (time.perf_counter() - started)


async def _measure(state: State, calls: int, entries: int) -> dict[str, float]:
    now = time.time()
    for n in range(entries):
        await state.revoke(new_revocation("sub", f"user-{n}", None, now, 86400, 30))
    claims = {"sub": "alice", "iss": "https://idp.example", "iat": now - 5, "exp": now + 600}
    fast = RateSettings(rate=1e9, burst=10**9)

    async def check(i: int) -> None:
        state.check_token(claims)

    async def take(i: int) -> None:
        client = f"10.0.{i % 250}.{i % 199}"
        group = [
            Bucket(("r", "client", client), fast, "client"),
            Bucket(("r", "sub", f"token\n\nuser-{i % 1000}"), fast, "subject"),
        ]
        refusal = (await state.take([group]))[0]
        if refusal is not None:
            raise refusal

    async def stream(i: int) -> None:
        lease = await state.acquire_stream(f"10.0.0.{i % 250}", f"user-{i % 1000}")
        await state.release_stream(lease)

    return {
        "check_us": await _sequential(check, calls * 10),
        "take_us": await _sequential(take, calls),
        "take_per_s": await _concurrent(take, calls),
        "stream_us": await _sequential(stream, calls),
        "stream_per_s": await _concurrent(stream, calls),
    }


async def _run(calls: int, url: str) -> dict[tuple[str, int], dict[str, float]]:
    results = {}
    for backend in ("memory", "redis"):
        for entries in (0, 10_000):
            state = create_state(_config(backend, url if backend == "redis" else None).settings)
            await state.open()
            try:
                results[(backend, entries)] = await _measure(state, calls, entries)
            finally:
                await state.close()
    return results


def _report(results: dict[tuple[str, int], dict[str, float]], calls: int) -> str:
    memory, redis = results[("memory", 0)], results[("redis", 0)]
    big_m, big_r = results[("memory", 10_000)], results[("redis", 10_000)]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.1f}x" if b else "-"

    rows = [
        ("revocation check, empty list (µs/call)", memory["check_us"], redis["check_us"], "{:.2f}"),
        (
            "revocation check, 10,000 entries (µs/call)",
            big_m["check_us"],
            big_r["check_us"],
            "{:.2f}",
        ),
        (
            "rate limit, client+subject, sequential (µs/request)",
            memory["take_us"],
            redis["take_us"],
            "{:.1f}",
        ),
        (
            f"rate limit, {CONCURRENCY} concurrent (requests/s)",
            memory["take_per_s"],
            redis["take_per_s"],
            "{:,.0f}",
        ),
        (
            "stream slot acquire+release, sequential (µs/stream)",
            memory["stream_us"],
            redis["stream_us"],
            "{:.1f}",
        ),
        (
            f"stream slot acquire+release, {CONCURRENCY} concurrent (streams/s)",
            memory["stream_per_s"],
            redis["stream_per_s"],
            "{:,.0f}",
        ),
    ]
    lines = [
        "# Shared state: redis against memory",
        "",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- {calls} calls per figure (revocation checks: {calls * 10}); Redis on loopback, "
        "started by the script; one process, one event loop",
        "- the revocation check reads the process's own copy with either backend (Redis is "
        "polled in the background), so it should cost the same",
        "",
        "| figure | memory | redis | redis / memory |",
        "|---|---:|---:|---:|",
    ]
    for name, m, r, fmt in rows:
        lines.append(f"| {name} | {fmt.format(m)} | {fmt.format(r)} | {ratio(r, m)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "state.md"))
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        process, url = _start_redis(workdir)
        try:
            results = asyncio.run(_run(args.calls, url))
        finally:
            process.terminate()
            process.wait(timeout=10)
    report = _report(results, args.calls)
    Path(args.out).write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
