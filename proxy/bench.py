"""`python -m proxy bench`: stream vs redirect on the same objects, with numbers.

By default it builds its own world: the demo's in-process S3 (counting what reaches it),
objects of several sizes, and the proxy as a separate `serve` process (so its CPU can be
read from /proc). A browser is simulated: it follows redirects, honours Cache-Control and
revalidates with ETag, so the second page view shows what caching saves each method.
Prints a table, and writes a Markdown report and (with matplotlib) a PNG chart.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import yaml
from multidict import CIMultiDict

SIZES = (10 * 1024, 100 * 1024, 1024 * 1024, 10 * 1024 * 1024)
METHODS = ("stream", "redirect")


@dataclass
class View:
    """One page view of all objects by one method, as the simulated browser saw it."""

    ttfb: list[float] = field(default_factory=list)  # seconds to the first body byte
    total: list[float] = field(default_factory=list)  # seconds to the last byte
    proxy_requests: int = 0
    proxy_bytes: int = 0  # body bytes the proxy sent
    s3_requests: int = 0
    s3_bytes: int = 0
    proxy_cpu: float = 0.0  # CPU seconds the proxy process spent
    client_bytes: int = 0  # object bytes the client ended up with (from network or cache)


@dataclass
class Browser:
    """Just enough of a browser cache: fresh responses are reused, stale ones revalidated."""

    entries: dict[str, tuple[float, CIMultiDict[str], bytes]] = field(default_factory=dict)

    def fresh(self, url: str, now: float) -> tuple[CIMultiDict[str], bytes] | None:
        entry = self.entries.get(url)
        if entry is None or entry[0] <= now:
            return None
        return entry[1], entry[2]

    def store(self, url: str, headers: CIMultiDict[str], body: bytes, now: float) -> None:
        cache = headers.get("Cache-Control", "")
        if "no-store" in cache:
            return
        max_age = 0
        for part in cache.split(","):
            name, _, value = part.strip().partition("=")
            if name == "max-age" and value.isdigit():
                max_age = int(value)
        self.entries[url] = (now + max_age, headers, body)

    def validators(self, url: str) -> dict[str, str]:
        entry = self.entries.get(url)
        if entry is None or "ETag" not in entry[1]:
            return {}
        return {"If-None-Match": entry[1]["ETag"]}


async def fetch(
    session: aiohttp.ClientSession, browser: Browser, url: str, headers: dict[str, str]
) -> tuple[float, float, int]:
    """Fetch like a browser; return (ttfb, total, bytes obtained)."""
    started = time.perf_counter()
    hops = 0
    while True:
        now = time.time()
        cached = browser.fresh(url, now)
        if cached is not None:
            cached_headers, body = cached
            if "Location" in cached_headers:  # a cached redirect
                url, hops = cached_headers["Location"], hops + 1
                continue
            elapsed = time.perf_counter() - started
            return elapsed, elapsed, len(body)
        request_headers = (
            {**headers, **browser.validators(url)} if hops == 0 else dict(browser.validators(url))
        )
        async with session.get(url, headers=request_headers, allow_redirects=False) as resp:
            if resp.status in (301, 302, 307):
                browser.store(url, CIMultiDict(resp.headers), b"", now)
                url, hops = resp.headers["Location"], hops + 1
                continue
            first = await resp.content.read(64 * 1024)
            ttfb = time.perf_counter() - started
            rest = await resp.read()
            total = time.perf_counter() - started
            if resp.status == 304:
                entry = browser.entries[url]
                browser.entries[url] = entry  # still valid
                return ttfb, total, len(entry[2])
            body = first + rest
            browser.store(url, CIMultiDict(resp.headers), body, now)
            return ttfb, total, len(body)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class World:
    """The demo S3 and a proxy process in front of it."""

    def __init__(self, workdir: Path) -> None:
        from .demo.s3 import CountingS3

        # The proxy process gets test credentials for moto; this process's env is untouched.
        self.env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
            self.env.pop(name, None)
        self.s3 = CountingS3()
        self.workdir = workdir
        self.secret = secrets.token_urlsafe(48)
        self.process: subprocess.Popen[bytes] | None = None
        self.base = ""

    def start(self, sizes: tuple[int, ...]) -> None:
        self.s3.start()
        client = self.s3.client(access_key="bench", secret_key="bench-secret")  # noqa: S106
        client.create_bucket(Bucket="bench")
        for size in sizes:
            client.put_object(Bucket="bench", Key=f"objects/{size}.bin", Body=os.urandom(size))
        self.s3.reset()
        config = {
            "listen": {"host": "127.0.0.1", "port": 0, "shutdown_grace": 1},
            "s3": {"endpoint_url": self.s3.endpoint, "addressing_style": "path"},
            "auth": {"algorithms": ["HS256"], "secret": self.secret},
            "metrics": {"path": "/_metrics"},
            "routes": [
                {
                    "name": "stream",
                    "match": "/stream/{key:.+}",
                    "bucket": "bench",
                    "key": "objects/{key}",
                    "delivery": "stream",
                    "access": "authenticated",
                },
                {
                    "name": "redirect",
                    "match": "/redirect/{key:.+}",
                    "bucket": "bench",
                    "key": "objects/{key}",
                    "delivery": "redirect",
                    "access": "authenticated",
                    "ttl": 300,
                    "stable": 3600,
                    "cache_control": "private, max-age=3600",
                },
            ],
        }
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "proxy",
                "serve",
                "--config",
                str(path),
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if "listening on" not in line:
            raise RuntimeError(f"proxy did not start: {line!r}")
        self.base = line.rsplit(" ", 1)[1].strip()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            if self.process.stdout is not None:
                self.process.stdout.close()
        self.s3.stop()

    def token(self) -> str:
        now = int(time.time())
        return jwt.encode(
            {"sub": "bench", "iat": now, "exp": now + 3600}, self.secret, algorithm="HS256"
        )


async def _metrics(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(base + "/_metrics") as response:
        result: dict[str, Any] = await response.json()
        return result


async def measure(
    world: World, sizes: tuple[int, ...], rounds: int, progress: Progress
) -> dict[str, list[View]]:
    assert world.process is not None
    headers = {"Authorization": f"Bearer {world.token()}"}
    results: dict[str, list[View]] = {method: [View(), View()] for method in METHODS}
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(connector=connector) as session:
        for method in METHODS:
            browser = Browser()
            for view_index in range(2):  # first view, then a second with the browser cache
                view = results[method][view_index]
                before = await _metrics(session, world.base)
                s3_before, cpu_before = world.s3.snapshot(), _cpu_seconds(world.process.pid)
                for round_index in range(rounds if view_index == 0 else 1):
                    if view_index == 0 and round_index > 0:
                        browser = Browser()  # each first view starts with an empty cache
                    for size in sizes:
                        url = f"{world.base}/{method}/{size}.bin"
                        ttfb, total, got = await fetch(session, browser, url, headers)
                        view.ttfb.append(ttfb)
                        view.total.append(total)
                        view.client_bytes += got
                        progress.step()
                after = await _metrics(session, world.base)
                s3_after = world.s3.snapshot()
                view.proxy_cpu = _cpu_seconds(world.process.pid) - cpu_before
                stats_before = before["by_delivery"].get(method, {})
                stats_after = after["by_delivery"].get(method, {})
                view.proxy_requests = stats_after.get("requests", 0) - stats_before.get(
                    "requests", 0
                )
                view.proxy_bytes = stats_after.get("bytes_sent", 0) - stats_before.get(
                    "bytes_sent", 0
                )
                view.s3_requests = sum(
                    s3_after[k] - s3_before[k] for k in ("proxy_requests", "presigned_requests")
                )
                view.s3_bytes = sum(
                    s3_after[k] - s3_before[k] for k in ("proxy_bytes", "presigned_bytes")
                )
    return results


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def step(self) -> None:
        self.done += 1
        width = 30
        filled = width * self.done // self.total
        sys.stderr.write(
            f"\r  [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} requests"
        )
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms" if values else "-"


def _mib(value: float) -> str:
    return f"{value / 1024 / 1024:.1f} MiB"


def report(results: dict[str, list[View]], sizes: tuple[int, ...], rounds: int) -> str:
    first = {m: results[m][0] for m in METHODS}
    second = {m: results[m][1] for m in METHODS}

    def cpu_per_gb(view: View) -> str:
        if not view.client_bytes:
            return "-"
        return f"{view.proxy_cpu / (view.client_bytes / 1e9):.2f} s"

    def row(name: str, views: dict[str, View], show: Callable[[View], str]) -> tuple[str, ...]:
        return (name, show(views["stream"]), show(views["redirect"]))

    rows = [
        row("median time to first byte (client)", first, lambda v: _ms(v.ttfb)),
        row("median total time per object (client)", first, lambda v: _ms(v.total)),
        row("requests that reached the proxy", first, lambda v: str(v.proxy_requests)),
        row("bytes sent through the proxy", first, lambda v: _mib(v.proxy_bytes)),
        row("S3 requests (by the proxy or by the client)", first, lambda v: str(v.s3_requests)),
        row("proxy CPU", first, lambda v: f"{v.proxy_cpu:.3f} s"),
        row("proxy CPU per GB delivered", first, cpu_per_gb),
        row(
            "second view: requests that reached the proxy", second, lambda v: str(v.proxy_requests)
        ),
        row("second view: requests that reached S3", second, lambda v: str(v.s3_requests)),
        row("second view: bytes sent through the proxy", second, lambda v: _mib(v.proxy_bytes)),
        row("second view: median total time per object", second, lambda v: _ms(v.total)),
    ]
    size_list = ", ".join(f"{s // 1024} KiB" for s in sizes)
    lines = [
        "# stream vs redirect",
        "",
        f"Objects: {size_list}; first views: {rounds} (each with an empty browser cache); "
        "then one more view with the cache of the last first view. The client follows "
        "redirects, honours Cache-Control and revalidates with ETag, like a browser. "
        "S3 is moto on loopback, so S3 latency is near zero here: against real S3 (20-50 ms "
        "away), every extra hop costs that much more.",
        "",
        "| | stream | redirect |",
        "|---|---|---|",
        *[f"| {name} | {a} | {b} |" for name, a, b in rows],
        "",
    ]
    return "\n".join(lines)


def chart(results: dict[str, list[View]], sizes: tuple[int, ...], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rounds = len(results["stream"][0].total) // len(sizes)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{s // 1024} KiB" for s in sizes]
    for method, offset in zip(METHODS, (-0.2, 0.2), strict=True):
        view = results[method][0]
        medians = [
            statistics.median(view.total[i :: len(sizes)][:rounds]) * 1000
            for i in range(len(sizes))
        ]
        axes[0].bar([i + offset for i in range(len(sizes))], medians, width=0.4, label=method)
    axes[0].set_xticks(range(len(sizes)), labels)
    axes[0].set_ylabel("ms per object (first view)")
    axes[0].set_title("time per object")
    axes[0].legend()
    categories = ["proxy MiB", "proxy req.", "S3 req.", "2nd view req."]
    for method, offset in zip(METHODS, (-0.2, 0.2), strict=True):
        first, second = results[method]
        values = [
            first.proxy_bytes / 2**20,
            first.proxy_requests,
            first.s3_requests,
            second.proxy_requests + second.s3_requests,
        ]
        axes[1].bar([i + offset for i in range(len(values))], values, width=0.4, label=method)
    axes[1].set_xticks(range(len(categories)), categories)
    axes[1].set_title("what each method costs")
    axes[1].legend()
    fig.tight_layout()
    path = out / "comparison.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_bench(out: Path, rounds: int, sizes: tuple[int, ...] = SIZES) -> int:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="s3-proxy-bench-") as workdir:
        world = World(Path(workdir))
        print("starting S3 (moto) and the proxy...", file=sys.stderr)
        world.start(sizes)
        try:
            progress = Progress(len(METHODS) * len(sizes) * (rounds + 1))
            results = asyncio.run(measure(world, sizes, rounds, progress))
        finally:
            world.stop()
    text = report(results, sizes, rounds)
    (out / "report.md").write_text(text)
    picture = chart(results, sizes, out)
    raw = {m: [v.__dict__ for v in views] for m, views in results.items()}
    (out / "results.json").write_text(json.dumps(raw, indent=1))
    print(text)
    print(
        f"report: {out / 'report.md'}"
        + (f", chart: {picture}" if picture else " (pip install matplotlib for the chart)")
    )
    return 0
