"""`python -m proxy bench`: stream vs redirect (vs cloudfront) on the same objects, with numbers.

Either world ends as the same run: a config (see benchplan) served by `python -m proxy serve`
as a separate process (so its CPU can be read from /proc), and a simulated browser that
fetches every object through each copy of its route. The browser follows redirects,
honours Cache-Control and revalidates with ETag, so a second page view shows what caching
saves each method. S3 requests are the proxy's own (from its metrics) plus the ones the
browser sends straight to S3. Prints a table, and writes a Markdown report, the raw numbers
and (with matplotlib) a PNG of charts that the report links.

- By default the world is built here: the demo's S3 (moto, in this process) with objects of
  several sizes, behind one route, and the demo's loopback STAND-IN for a CloudFront edge
  (proxy/demo/cloudfront_standin.py, not a CDN) for the third method.
- With a config, the world is the user's: their S3 and routes, and the paths they name; and
  their CloudFront distribution, when the config has a cloudfront section.

The default world also compares uploads: the same bytes PUT through the proxy (stream), PUT
to the proxy, answered 307, then PUT to the presigned URL (redirect), and sent in parts to the
URLs of a presigned multipart upload that the sign API began and completed (multipart), into a
bench bucket.

Each S3 engine asked for (`--engine`, both by default) gets a run of its own, one after the
other with a fresh proxy process: the report is the first engine's, followed by the engines
side by side on what they change (the stream column: its time and the proxy's CPU).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import aiohttp
import yaml
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from .auth import issue_token
from .benchplan import CLOUDFRONT, METHODS, METRICS_PATH, PREFIXES, BenchError, Plan, plan_bench
from .config import Config, parse_config
from .ops import summary

if TYPE_CHECKING:
    from .demo.cloudfront_standin import EdgeThread
    from .demo.s3 import CountingS3

SIZES = (10 * 1024, 100 * 1024, 1024 * 1024, 10 * 1024 * 1024)
UPLOAD_SIZES = (64 * 1024, 1024 * 1024, 8 * 1024 * 1024)
UPLOAD_METHODS = (*METHODS, "multipart")
UPLOAD_PREFIXES = {method: f"/bench-uploads/{method}" for method in UPLOAD_METHODS}
MULTIPART_PARALLEL = 4  # part PUTs in flight at once, as a browser uploader sends them
SIGN_PATH = "/_sign"
UPLOAD_TYPE = "application/octet-stream"
ENGINES = ("builtin", "aiobotocore")
TOKEN_TTL = 3600  # seconds; a minted token outlives any sensible run
START_TIMEOUT = 30.0  # seconds for the proxy process to listen
MAX_HOPS = 10
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass
class Fetched:
    """One object fetched as a browser would, possibly over several hops."""

    ttfb: float = 0.0  # seconds to the first body byte
    total: float = 0.0  # seconds to the last byte
    size: int = 0  # object bytes the client ended up with (from network or cache)
    status: int = 200  # the last answer: 200 when the browser cache answered, 0 for none
    answered_by: str = "the browser cache"
    error: str = ""  # what a failed answer named
    s3_requests: int = 0  # sent by the client straight to S3 (following redirects)
    s3_bytes: int = 0  # body bytes S3 sent the client
    edge_requests: int = 0  # sent by the client to the CloudFront edge
    edge_bytes: int = 0  # body bytes the edge sent the client

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400

    def describe(self) -> str:
        if self.ok:
            return str(self.status)
        if self.status == 0:
            return f"no answer from {self.answered_by} ({self.error})"
        return f"{self.status} from {self.answered_by}" + (f" ({self.error})" if self.error else "")


@dataclass
class View:
    """One page view of all objects by one method, as the simulated browser saw it."""

    ttfb: list[float] = field(default_factory=list)  # seconds to the first body byte
    total: list[float] = field(default_factory=list)  # seconds to the last byte
    proxy_requests: int = 0
    proxy_bytes: int = 0  # body bytes the proxy sent
    s3_requests: int = 0  # by the proxy or by the client
    s3_direct_bytes: int = 0  # object bytes the client fetched straight from S3
    proxy_cpu: float = 0.0  # CPU seconds the proxy process spent
    client_bytes: int = 0  # object bytes the client ended up with (from network or cache)
    edge_requests: int = 0  # by the client to the CloudFront edge
    edge_bytes: int = 0  # object bytes the edge sent the client
    # S3 requests a CloudFront edge made are not seen from here (only the stand-in's are).
    s3_unseen: bool = False

    def add(self, fetched: Fetched) -> None:
        self.ttfb.append(fetched.ttfb)
        self.total.append(fetched.total)
        self.client_bytes += fetched.size
        self.s3_requests += fetched.s3_requests
        self.s3_direct_bytes += fetched.s3_bytes
        self.edge_requests += fetched.edge_requests
        self.edge_bytes += fetched.edge_bytes


@dataclass
class Browser:
    """Just enough of a browser cache: fresh responses are reused, stale ones revalidated.
    Entries keep the body's size, not the body: objects may be large."""

    entries: dict[str, tuple[float, CIMultiDict[str], int]] = field(default_factory=dict)

    def fresh(self, url: str, now: float) -> tuple[CIMultiDict[str], int] | None:
        entry = self.entries.get(url)
        if entry is None or entry[0] <= now:
            return None
        return entry[1], entry[2]

    def store(self, url: str, headers: CIMultiDict[str], size: int, now: float) -> None:
        cache = headers.get("Cache-Control", "")
        if "no-store" in cache:
            return
        max_age = 0
        for part in cache.split(","):
            name, _, value = part.strip().partition("=")
            if name == "max-age" and value.isdigit():
                max_age = int(value)
        self.entries[url] = (now + max_age, headers, size)

    def validators(self, url: str) -> dict[str, str]:
        entry = self.entries.get(url)
        if entry is None or "ETag" not in entry[1]:
            return {}
        return {"If-None-Match": entry[1]["ETag"]}


async def fetch(
    session: aiohttp.ClientSession,
    browser: Browser,
    url: str,
    headers: Mapping[str, str],
    proxy: str,
    edge: str | None = None,
) -> Fetched:
    """Fetch like a browser: `headers` go to the proxy (whose base URL is `proxy`) only; an
    answer from `edge` (a CloudFront origin) is counted apart from S3's."""
    got = Fetched()
    started = time.perf_counter()
    for hop in range(MAX_HOPS):
        now = time.time()
        cached = browser.fresh(url, now)
        if cached is not None:
            cached_headers, size = cached
            if "Location" in cached_headers:  # a cached redirect
                url = _follow(url, cached_headers["Location"])
                continue
            got.ttfb = got.total = time.perf_counter() - started
            got.size, got.status, got.answered_by = size, 200, "the browser cache"
            return got
        by_edge = edge is not None and url.startswith(edge + "/")
        direct = not url.startswith(proxy) and not by_edge
        got.answered_by = "S3" if direct else "the edge" if by_edge else "the proxy"
        got.s3_requests += direct
        got.edge_requests += by_edge
        sent = {**(headers if hop == 0 else {}), **browser.validators(url)}
        try:
            async with session.get(url, headers=sent, allow_redirects=False) as resp:
                got.status = resp.status
                if resp.status in REDIRECTS and "Location" in resp.headers:
                    browser.store(url, CIMultiDict(resp.headers), 0, now)
                    url = _follow(url, resp.headers["Location"])
                    continue
                if not got.ok:
                    got.error = _error_name(await resp.content.read(4096))
                    return got
                first = await resp.content.read(64 * 1024)
                got.ttfb = time.perf_counter() - started
                size = len(first)
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                got.total = time.perf_counter() - started
                if direct:
                    got.s3_bytes += size
                elif by_edge:
                    got.edge_bytes += size
                if resp.status == 304:
                    got.size = browser.entries[url][2]  # still valid
                else:
                    browser.store(url, CIMultiDict(resp.headers), size, now)
                    got.size = size
                return got
        except (aiohttp.ClientError, TimeoutError) as exc:
            got.status, got.error = 0, str(exc) or type(exc).__name__
            return got
    got.status, got.error = 0, f"more than {MAX_HOPS} redirects"
    return got


def _follow(url: str, location: str) -> str:
    # An absolute Location is kept to the byte: it is a presigned URL, and a cache key.
    return location if "://" in location else str(URL(url).join(URL(location)))


def _error_name(body: bytes) -> str:
    """The error an answer names: S3's XML <Code>, or the proxy's JSON `error`."""
    text = body.decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]{1,80})</Code>", text)
    if code:
        return code.group(1)
    try:
        detail = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return ""
    return str(detail) if detail else ""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * cpu_tick()


def cpu_tick() -> float:
    """The smallest CPU time /proc reports (a clock tick, usually 0.01 s)."""
    return 1 / os.sysconf("SC_CLK_TCK")


class ProxyProcess:
    """`python -m proxy serve` on the bench config, as its own process; a context manager.
    Its output (stdout and stderr) is read all along, so a full pipe never blocks it, and
    the last lines are kept to show why it stopped."""

    def __init__(self, config: Mapping[str, Any], workdir: Path, env: Mapping[str, str]) -> None:
        self.path = workdir / "bench.yaml"
        self.path.touch(mode=0o600)  # it may hold the config's secrets
        self.path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.env = dict(env)
        self.base = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._output: deque[str] = deque(maxlen=20)
        self._ready: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> ProxyProcess:
        command = [sys.executable, "-m", "proxy", "serve", "--config", str(self.path)]
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [*command, "--log-level", "WARNING"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        assert self._process.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._process.stdout,), daemon=True
        )
        self._reader.start()
        try:
            line = self._ready.get(timeout=START_TIMEOUT)
        except queue.Empty:
            line = None
        if line is None:
            self.stop()
            raise BenchError(
                f"the proxy did not start (exit status {self._process.returncode}); "
                f"its last output:{self.output_tail()}"
            )
        self.base = str(json.loads(line)["url"])
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self._output.append(line)
            if " listening on http://" in line:
                self._ready.put(line)
        self._ready.put(None)

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._process.stdout is not None:
            self._process.stdout.close()

    def output_tail(self) -> str:
        lines = list(self._output)
        return "".join(f"\n  {line}" for line in lines) if lines else " (none)"


@dataclass(frozen=True)
class Target:
    """A running bench proxy: where it is, and what the client fetches and sends."""

    base: str
    pid: int
    paths: tuple[str, ...]
    headers: Mapping[str, str]
    methods: tuple[str, ...] = METHODS
    edge: str | None = None  # the CloudFront distribution's origin, with cloudfront
    # S3 requests the edge has made so far, where they can be seen (the stand-in's)
    edge_s3_requests: Callable[[], int] | None = None

    def url(self, method: str, path: str) -> str:
        return f"{self.base}{PREFIXES[method]}{path}"


async def _metrics(session: aiohttp.ClientSession, target: Target) -> dict[str, Any]:
    """The proxy's counters, parsed from its Prometheus text by prometheus_client itself."""
    async with session.get(target.base + METRICS_PATH) as response:
        response.raise_for_status()
        text = await response.text()
    return summary(text_string_to_metric_families(text))


async def check(session: aiohttp.ClientSession, target: Target) -> list[int]:
    """One unmeasured fetch per object and method: warms the connections, checks that every
    path answers both ways, and learns the objects' sizes."""
    sizes, lines, failed = [], [], False
    for path in target.paths:
        got = {
            method: await fetch(
                session,
                Browser(),
                target.url(method, path),
                target.headers,
                target.base,
                target.edge,
            )
            for method in target.methods
        }
        sizes.append(got["stream"].size)
        failed = failed or not all(fetched.ok for fetched in got.values())
        lines.append(f"\n  {path}: " + "; ".join(f"{m} {f.describe()}" for m, f in got.items()))
    if failed:
        refused = any(
            f" {status} from the proxy" in line for line in lines for status in (401, 403)
        )
        hint = "\n(a 401 or 403: pass --token, or --sub/--claim for the token the bench mints)"
        raise BenchError(
            "not every path answered, so nothing was measured:"
            + "".join(lines)
            + (hint if refused else "")
        )
    return sizes


async def measure(target: Target, rounds: int) -> tuple[list[int], dict[str, list[View]]]:
    results: dict[str, list[View]] = {method: [View(), View()] for method in target.methods}
    connector = aiohttp.TCPConnector(limit=8)
    # Bytes as they cross the network; a stuck S3 or proxy ends the run instead of hanging it.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        ways = "both ways" if len(target.methods) == 2 else f"{len(target.methods)} ways"
        print(f"checking {len(target.paths)} paths {ways}...", file=sys.stderr)
        sizes = await check(session, target)
        progress = Progress(len(target.methods) * len(target.paths) * (rounds + 1))
        for method in target.methods:
            browser = Browser()
            for view_index, view in enumerate(results[method]):
                # A first view (`rounds` of them, each with an empty cache), then a second
                # view with the cache of the last first view.
                before = await _metrics(session, target)
                cpu_before = _cpu_seconds(target.pid)
                edge_before = _edge_s3(target, method)
                for round_index in range(rounds if view_index == 0 else 1):
                    if view_index == 0 and round_index > 0:
                        browser = Browser()
                    for path in target.paths:
                        url = target.url(method, path)
                        fetched = await fetch(
                            session, browser, url, target.headers, target.base, target.edge
                        )
                        if not fetched.ok:
                            raise BenchError(f"{path} by {method}: {fetched.describe()}")
                        view.add(fetched)
                        progress.step()
                after = await _metrics(session, target)
                view.proxy_cpu = _cpu_seconds(target.pid) - cpu_before
                stats_before = before["by_delivery"].get(method, {})
                stats_after = after["by_delivery"].get(method, {})
                view.proxy_requests = stats_after.get("requests", 0) - stats_before.get(
                    "requests", 0
                )
                view.proxy_bytes = stats_after.get("bytes_sent", 0) - stats_before.get(
                    "bytes_sent", 0
                )
                view.s3_requests += after["s3_requests"] - before["s3_requests"]
                edge_after = _edge_s3(target, method)
                if edge_before is None or edge_after is None:
                    view.s3_unseen = method == CLOUDFRONT
                else:
                    view.s3_requests += edge_after - edge_before
    return sizes, results


def _edge_s3(target: Target, method: str) -> int | None:
    """S3 requests the edge has made, for the cloudfront method, where they can be seen."""
    if method != CLOUDFRONT or target.edge_s3_requests is None:
        return None
    return target.edge_s3_requests()


@dataclass
class UploadRun:
    """`rounds` uploads of one size by one method, as the client and the proxy saw them."""

    size: int
    method: str
    total: list[float] = field(default_factory=list)  # seconds per upload, to the last answer
    # Bytes through the proxy: the upload bytes it took (none for a 307 answered before the
    # body); for multipart, the sign API's JSON both ways (the parts never reach it).
    proxy_bytes: int = 0
    s3_requests: int = 0  # by the proxy or by the client
    proxy_cpu: float = 0.0  # CPU seconds the proxy process spent


async def upload(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str]
) -> tuple[float, int, int]:
    """PUT `body` as a careful client does: with `Expect: 100-continue`, so a redirect costs
    no body to the proxy, and following a 307 with the same type and length but without the
    token. Returns the seconds taken, the bytes the proxy stored, and the requests sent to S3."""
    started = time.perf_counter()
    sent = {**headers, "Content-Type": UPLOAD_TYPE}
    async with session.put(
        url, data=body, headers=sent, expect100=True, allow_redirects=False
    ) as response:
        if response.status in (200, 201):  # replaced or created
            stored = int((await response.json())["size"])
            return time.perf_counter() - started, stored, 0
        if response.status != 307 or "Location" not in response.headers:
            detail = _error_name(await response.content.read(4096))
            raise BenchError(f"PUT {url}: {response.status} from the proxy ({detail})")
        location = URL(response.headers["Location"], encoded=True)  # signed: kept to the byte
    async with session.put(location, data=body, headers={"Content-Type": UPLOAD_TYPE}) as s3:
        if s3.status != 200:
            detail = _error_name(await s3.content.read(4096))
            raise BenchError(f"PUT {url}, redirected: {s3.status} from S3 ({detail})")
        await s3.read()
    return time.perf_counter() - started, 0, 1


async def upload_in_parts(
    session: aiohttp.ClientSession, base: str, path: str, body: bytes, headers: Mapping[str, str]
) -> tuple[float, int, int]:
    """Send `body` as a presigned multipart upload: `multipart` from the sign API, each part
    PUT to its URL (MULTIPART_PARALLEL at a time), then `complete`. Returns the seconds taken,
    the JSON bytes that crossed the proxy, and the requests sent to S3."""
    started = time.perf_counter()
    entry = {"path": path, "content_type": UPLOAD_TYPE, "size": len(body)}
    begun, crossed = await _sign_entry(session, base, headers, "multipart", entry)
    part_size = int(begun["part_size"])
    slots = asyncio.Semaphore(MULTIPART_PARALLEL)

    async def send(part: Mapping[str, Any]) -> dict[str, Any]:
        number = int(part["number"])
        piece = body[(number - 1) * part_size : number * part_size]
        async with slots, session.put(URL(part["url"], encoded=True), data=piece) as answer:
            if answer.status != 200:
                detail = _error_name(await answer.content.read(4096))
                raise BenchError(f"part {number} of {path}: {answer.status} from S3 ({detail})")
            return {"number": number, "etag": answer.headers["ETag"]}

    listed = await asyncio.gather(*(send(part) for part in begun["parts"]))
    if len(listed) * part_size < len(body):
        raise BenchError(f"{path}: more parts than sign_api.max_paths; raise it for the bench")
    done = {"path": path, "upload_id": begun["upload_id"], "parts": listed}
    _, more = await _sign_entry(session, base, headers, "complete", done)
    return time.perf_counter() - started, crossed + more, len(listed)


async def _sign_entry(
    session: aiohttp.ClientSession,
    base: str,
    headers: Mapping[str, str],
    kind: str,
    entry: Mapping[str, Any],
) -> tuple[dict[str, Any], int]:
    """One sign API entry's answer, and the bytes of the request and answer bodies."""
    sent = json.dumps({kind: [entry]}).encode()
    async with session.post(
        base + SIGN_PATH, data=sent, headers={**headers, "Content-Type": "application/json"}
    ) as response:
        received = await response.read()
    if response.status != 200:
        raise BenchError(f"{SIGN_PATH} {kind}: {response.status} ({_error_name(received)})")
    answer: dict[str, Any] = json.loads(received)[kind][0]
    if int(answer.get("status", 200)) >= 400:
        refused = f"{answer['status']} {answer['error']}"
        raise BenchError(f"{SIGN_PATH} {kind} {entry['path']}: {refused}")
    return answer, len(sent) + len(received)


async def _upload_once(
    session: aiohttp.ClientSession, target: Target, method: str, path: str, body: bytes
) -> tuple[float, int, int]:
    if method == "multipart":
        return await upload_in_parts(session, target.base, path, body, target.headers)
    return await upload(session, target.base + path, body, target.headers)


async def measure_uploads(target: Target, sizes: Sequence[int], rounds: int) -> list[UploadRun]:
    """Per size and method, one unmeasured upload (it warms the connections and checks the
    route), then `rounds` measured ones of the same bytes to the same key."""
    runs = []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        print(f"uploading {len(sizes)} sizes three ways...", file=sys.stderr)
        progress = Progress(len(UPLOAD_METHODS) * len(sizes) * rounds)
        for size in sizes:
            body = os.urandom(size)
            for method in UPLOAD_METHODS:
                path = f"{UPLOAD_PREFIXES[method]}/{size}.bin"
                await _upload_once(session, target, method, path, body)
                run = UploadRun(size, method)
                before = await _metrics(session, target)
                cpu_before = _cpu_seconds(target.pid)
                for _ in range(rounds):
                    seconds, stored, direct = await _upload_once(
                        session, target, method, path, body
                    )
                    run.total.append(seconds)
                    run.proxy_bytes += stored
                    run.s3_requests += direct
                    progress.step()
                after = await _metrics(session, target)
                run.proxy_cpu = _cpu_seconds(target.pid) - cpu_before
                run.s3_requests += after["s3_requests"] - before["s3_requests"]
                runs.append(run)
    return runs


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
    # Small amounts in their own unit: "0.0 MiB" would read as nothing at all.
    if value < 2**20:
        return _size(int(value))
    return f"{value / 1024 / 1024:.1f} MiB"


BELOW_RESOLUTION = "below what this run can measure; use more --rounds or larger objects"


def _cpu(seconds: float, tick: float) -> str:
    """CPU seconds, or an upper bound where they are below the tick /proc counts in."""
    if seconds < tick:
        return f"< {tick:.2g} s ({BELOW_RESOLUTION})"
    return f"{seconds:.2f} s"


def _size(value: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value} B"


def report(
    results: dict[str, list[View]],
    objects: Sequence[tuple[str, int]],
    rounds: int,
    notes: Sequence[str],
    tick: float | None = None,
    chart: str | None = None,
) -> str:
    """The report as Markdown; `tick` is the CPU time resolution (default: this machine's);
    `chart`, the file name of the charts beside it."""
    methods = tuple(results)
    first = {m: results[m][0] for m in methods}
    second = {m: results[m][1] for m in methods}
    tick = cpu_tick() if tick is None else tick

    def cpu_per_gb(view: View) -> str:
        if not view.client_bytes:
            return "-"
        gigabytes = view.client_bytes / 1e9
        if view.proxy_cpu < tick:
            return f"< {tick / gigabytes:.2g} s ({BELOW_RESOLUTION})"
        return f"{view.proxy_cpu / gigabytes:.2f} s"

    def row(name: str, views: dict[str, View], show: Callable[[View], str]) -> tuple[str, ...]:
        return (name, *(show(views[method]) for method in methods))

    def s3(view: View) -> str:
        if view.s3_unseen:
            return f"{view.s3_requests} + CloudFront's (not seen from here)"
        return str(view.s3_requests)

    edge = CLOUDFRONT in methods
    rows = [
        row("median time to first byte (client)", first, lambda v: _ms(v.ttfb)),
        row("median total time per object (client)", first, lambda v: _ms(v.total)),
        row("requests that reached the proxy", first, lambda v: str(v.proxy_requests)),
        row("bytes sent through the proxy", first, lambda v: _mib(v.proxy_bytes)),
        *(
            [row("requests that reached the edge", first, lambda v: str(v.edge_requests))]
            if edge
            else []
        ),
        row(
            "S3 requests (by the proxy, the client or the edge)"
            if edge
            else "S3 requests (by the proxy or by the client)",
            first,
            s3,
        ),
        row("proxy CPU", first, lambda v: _cpu(v.proxy_cpu, tick)),
        row("proxy CPU per GB delivered", first, cpu_per_gb),
        row(
            "second view: requests that reached the proxy", second, lambda v: str(v.proxy_requests)
        ),
        *(
            [
                row(
                    "second view: requests that reached the edge",
                    second,
                    lambda v: str(v.edge_requests),
                )
            ]
            if edge
            else []
        ),
        row("second view: requests that reached S3", second, s3),
        row("second view: bytes sent through the proxy", second, lambda v: _mib(v.proxy_bytes)),
        row("second view: median total time per object", second, lambda v: _ms(v.total)),
    ]
    object_list = ", ".join(f"`{path}` ({_size(size)})" for path, size in objects)
    ways = "both ways" if len(methods) == 2 else "each way"
    lines = [
        "# " + " vs ".join(methods),
        "",
        f"Objects: {object_list}; first views: {rounds} (each with an empty browser cache, "
        f"after one unmeasured fetch of each object {ways}); then one more view with the "
        "cache of the last first view. The client follows redirects, honours Cache-Control "
        "and revalidates with ETag, like a browser.",
        "",
        "| | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
        *["| " + " | ".join(cells) + " |" for cells in rows],
        "",
        *(
            [
                f"![time to first byte, bytes through the proxy, requests per view]({chart})",
                "",
            ]
            if chart
            else [f"(No charts: {CHARTS_NEED})", ""]
        ),
        "Notes:",
        "",
        *[f"- {note}" for note in notes],
        "",
    ]
    return "\n".join(lines)


def engine_report(runs: Mapping[str, dict[str, list[View]]], tick: float | None = None) -> str:
    """The S3 engines side by side on streamed first views, the only path where they differ
    (a redirect is signed by the same code whichever engine runs)."""
    tick = cpu_tick() if tick is None else tick
    engines = list(runs)
    first = {engine: runs[engine]["stream"][0] for engine in engines}

    def cpu_per_request(view: View) -> str:
        if not view.proxy_requests or view.proxy_cpu < tick:
            return f"< {tick:.2g} s in all ({BELOW_RESOLUTION})"
        return f"{view.proxy_cpu / view.proxy_requests * 1e3:.2f} ms"

    rows: list[tuple[str, Callable[[View], str]]] = [
        ("median time to first byte (client)", lambda v: _ms(v.ttfb)),
        ("median total time per object (client)", lambda v: _ms(v.total)),
        ("S3 requests by the proxy", lambda v: str(v.s3_requests)),
        ("proxy CPU", lambda v: _cpu(v.proxy_cpu, tick)),
        ("proxy CPU per request", cpu_per_request),
    ]
    lines = [
        "# S3 engines: stream",
        "",
        "The same objects streamed by the same proxy and config, with each `s3.engine` in turn "
        "(a fresh proxy process each, first views only).",
        "",
        "| | " + " | ".join(engines) + " |",
        "|---|" + "---|" * len(engines),
        *[f"| {name} | {' | '.join(show(first[e]) for e in engines)} |" for name, show in rows],
        "",
    ]
    return "\n".join(lines)


def upload_report(runs: Sequence[UploadRun], rounds: int, tick: float | None = None) -> str:
    """The uploads comparison as Markdown: per size, a row per method."""
    tick = cpu_tick() if tick is None else tick

    def cpu_per_upload(run: UploadRun) -> str:
        if run.proxy_cpu < tick:
            return f"< {tick / rounds:.2g} s ({BELOW_RESOLUTION})"
        return f"{run.proxy_cpu / rounds * 1e3:.1f} ms"

    def cpu_per_gib(run: UploadRun) -> str:
        if run.proxy_cpu < tick:
            return f"< {tick / rounds / run.size * 2**30:.2g} s"
        return f"{run.proxy_cpu / rounds / run.size * 2**30:.2f} s"

    rows = [
        f"| {_size(run.size)} | {run.method} | {_ms(run.total)} | "
        f"{_mib(run.proxy_bytes / rounds)} | {run.s3_requests / rounds:g} | {cpu_per_upload(run)} "
        f"| {_mib(run.proxy_bytes / rounds / run.size * 2**30)} | {cpu_per_gib(run)} |"
        for run in runs
    ]
    lines = [
        "## Uploads",
        "",
        f"The same bytes uploaded {rounds} time(s) per size and method (after one unmeasured "
        "upload), to a key that is overwritten. stream: `PUT` through the proxy, which passes "
        "the body on to S3. redirect: `PUT` to the proxy, answered `307` before the body (the "
        "client sends `Expect: 100-continue`), then the same `PUT` to the presigned URL. "
        "multipart: `POST /_sign` `multipart`, each part `PUT` to its presigned URL "
        f"({MULTIPART_PARALLEL} at a time), then `complete`. Bytes through the proxy are the "
        "upload bytes it stored, and for multipart the sign API's JSON both ways; S3 requests "
        "include the proxy's own. Per GiB: the per-upload figures scaled to 1 GiB uploaded in "
        "uploads of that size (a multipart upload's fixed calls make small sizes look dear).",
        "",
        "| size | method | median time per upload (client) | bytes through the proxy per "
        "upload | S3 requests per upload | proxy CPU per upload | bytes through the proxy "
        "per GiB | proxy CPU per GiB |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    return "\n".join(lines)


CHART = "comparison.png"  # beside report.md, which links it
COLOURS = {"stream": "#3867d6", "redirect": "#e17a16", "cloudfront": "#2a9d5c"}  # as the demo


# What to install for the charts: the extra that has matplotlib, named as pip takes it.
CHARTS_NEED = "the bench extra draws them with matplotlib: pip install -e '.[bench]'"


def chart(
    results: dict[str, list[View]], objects: Sequence[tuple[str, int]], out: Path
) -> Path | None:
    """Write the charts beside the report; without matplotlib, none (the report says how)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig = draw_charts(results, objects)
    path = out / CHART
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_charts(results: dict[str, list[View]], objects: Sequence[tuple[str, int]]) -> Any:
    """The comparison as a matplotlib figure of three charts: the client's time to first byte
    per object, the bytes through the proxy, and the requests a first and a second view sent."""
    import matplotlib.pyplot as plt

    count = len(objects)
    methods = tuple(results)
    width = 0.8 / len(methods)  # side by side, centred on each group
    offsets = [width * (k - (len(methods) - 1) / 2) for k in range(len(methods))]
    rounds = len(results["stream"][0].ttfb) // count
    fig, (ttfb_ax, bytes_ax, requests_ax) = plt.subplots(1, 3, figsize=(14, 4.4))
    labels = [f"{path.rsplit('/', 1)[-1][:16]}\n{_size(size)}" for path, size in objects]
    for method, offset in zip(methods, offsets, strict=True):
        ttfb = results[method][0].ttfb  # in fetch order: each round fetches every object
        medians = [statistics.median(ttfb[i::count]) * 1000 for i in range(count)]
        bars = ttfb_ax.bar(
            [i + offset for i in range(count)], medians, width, label=method, color=COLOURS[method]
        )
        ttfb_ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ttfb_ax.set_xticks(range(count), labels)
    ttfb_ax.set_ylabel(f"ms, median of {rounds} first view(s)")
    ttfb_ax.set_title("time to first byte at the client")
    ttfb_ax.set_ylim(top=ttfb_ax.get_ylim()[1] * 1.2)
    ttfb_ax.legend()

    sent = [results[method][0].proxy_bytes / rounds / 2**20 for method in methods]
    bars = bytes_ax.bar(methods, sent, 0.5, color=[COLOURS[m] for m in methods])
    bytes_ax.bar_label(bars, labels=[_mib(value * 2**20) for value in sent], fontsize=9)
    bytes_ax.set_ylabel("MiB per first view")
    bytes_ax.set_title("bytes through the proxy")

    views = ("first view", "second view")
    highest = 0.0
    for method, offset in zip(methods, offsets, strict=True):
        first, second = results[method]
        proxy = [first.proxy_requests / rounds, second.proxy_requests]
        s3 = [first.s3_requests / rounds, second.s3_requests]
        edge = [first.edge_requests / rounds, second.edge_requests]
        where = [i + offset for i in range(len(views))]
        colour = COLOURS[method]
        requests_ax.bar(where, proxy, width, color=colour, label=f"{method}: to the proxy")
        bars = requests_ax.bar(
            where,
            s3,
            width,
            bottom=proxy,
            color="white",
            edgecolor=colour,
            hatch="//",
            label=f"{method}: to S3",
        )
        if any(edge):
            below = [a + b for a, b in zip(proxy, s3, strict=True)]
            bars = requests_ax.bar(
                where,
                edge,
                width,
                bottom=below,
                color="white",
                edgecolor=colour,
                hatch="..",
                label=f"{method}: to the edge",
            )
        totals = [a + b + c for a, b, c in zip(proxy, s3, edge, strict=True)]
        requests_ax.bar_label(bars, labels=[f"{total:g}" for total in totals], fontsize=9)
        highest = max(highest, *totals)
    requests_ax.set_xticks(range(len(views)), views)
    requests_ax.set_ylabel("requests per view")
    requests_ax.set_title("requests (S3's include the proxy's and the edge's)")
    requests_ax.set_ylim(top=max(highest, 1) * 1.5)  # room for the legend above the bars
    requests_ax.legend(fontsize=8, ncol=2, loc="upper center")
    fig.tight_layout()
    return fig


def run_config_bench(
    config_path: Path,
    config: Config,
    paths: Sequence[str],
    out: Path,
    rounds: int,
    token: str | None = None,
    claims: Mapping[str, Any] | None = None,
    engines: Sequence[str] = ENGINES,
) -> int:
    """Bench the routes of a user's config on `paths`, against the S3 it names."""
    plan = plan_bench(config, paths, config_path.parent)
    s3 = config.settings.s3
    where = s3.endpoint_url or f"AWS in {s3.region}"
    about = (
        f"Config: `{config_path}`; S3 is {where}, as reached from this machine (the proxy "
        "runs here too), so every time includes that way to S3 and back."
    )
    token = token or _mint_token(config, plan, claims or {"sub": "bench"})
    edge = config.cloudfront.origin if config.cloudfront is not None else None
    return _run(plan, token, os.environ, out, rounds, about, engines, edge=edge)


def run_bench(
    out: Path,
    rounds: int,
    sizes: tuple[int, ...] = SIZES,
    engines: Sequence[str] = ENGINES,
    upload_sizes: Sequence[int] = UPLOAD_SIZES,
) -> int:
    """Bench the default world: the demo's S3 in this process, objects of `sizes`, the
    demo's stand-in CloudFront edge, and uploads of `upload_sizes`."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
    s3 = _demo_s3()
    print("starting S3 (moto), the stand-in edge and the proxy...", file=sys.stderr)
    s3.start()
    edge: EdgeThread | None = None
    keys = tempfile.TemporaryDirectory(prefix="s3-proxy-bench-key-")
    try:
        client = s3.client(access_key="bench", secret_key="bench-secret")  # noqa: S106
        client.create_bucket(Bucket="bench")
        for size in sizes:
            client.put_object(Bucket="bench", Key=f"objects/{size}.bin", Body=os.urandom(size))
        from .demo import start_edge

        stand_in = start_edge(Path(keys.name), s3.endpoint, bucket="bench")
        edge = stand_in.thread
        data = _demo_config(s3.endpoint, stand_in.origin, stand_in.key_file)
        config = parse_config(yaml.safe_dump(data), env={})
        plan = plan_bench(config, [f"/objects/{size}.bin" for size in sizes])
        # Upload routes are the bench's own, not copies of a route the plan picked.
        routes = [*plan.config["routes"], *_upload_routes()]
        plan = replace(plan, config={**plan.config, "routes": routes})
        # The proxy process gets test credentials for moto; this process's env is untouched.
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
            env.pop(name, None)
        about = (
            "S3 is moto on loopback, so S3 latency is near zero here: against real S3 (20-50 ms "
            "away), every extra hop costs that much more. The cloudfront method goes through "
            "the demo's loopback stand-in for a CloudFront edge (it verifies signatures as "
            "CloudFront does and caches in memory; not a CDN), so its times say nothing of a "
            "real edge's distance; its requests and bytes do. The unmeasured first fetch fills "
            "the edge's cache, as any earlier viewer would: measured views find it there."
        )
        token = _mint_token(config, plan, {"sub": "bench"})
        return _run(
            plan,
            token,
            env,
            out,
            rounds,
            about,
            engines,
            upload_sizes,
            edge=stand_in.origin,
            edge_s3_requests=lambda: s3.snapshot()["edge_requests"],
        )
    finally:
        if edge is not None:
            edge.stop()
        keys.cleanup()
        s3.stop()


def _demo_s3() -> CountingS3:
    try:
        from .demo.s3 import CountingS3
    except ImportError as exc:  # moto is an optional dependency
        raise BenchError(
            "the default bench runs the demo's S3 and needs the bench extra: pip install -e "
            f"'.[bench]' ({exc.name} is missing); or bench your own routes with --config "
            "and --path"
        ) from None
    return CountingS3()


def _demo_config(endpoint: str, edge: str, key_file: Path) -> dict[str, Any]:
    from .demo import EDGE_KEY_ID

    return {
        "s3": {"endpoint_url": endpoint, "addressing_style": "path"},
        "auth": {"algorithms": ["HS256"], "secret": secrets.token_urlsafe(48)},
        "cloudfront": {"domain": edge, "key_pair_id": EDGE_KEY_ID, "private_key": str(key_file)},
        "routes": [
            {
                # The README's gallery route; its stream copy drops cache_control (benchplan).
                "name": "objects",
                "match": "/objects/{key:.+}",
                "bucket": "bench",
                "key": "objects/{key}",
                "delivery": "redirect",
                "access": "authenticated",
                "ttl": 300,
                "stable": 3600,
                "cache_control": "private, max-age=3600",
            }
        ],
    }


def _upload_routes() -> list[dict[str, Any]]:
    """An upload route into the bench bucket per upload method."""
    return [
        {
            "name": f"bench-uploads/{method}",
            "match": UPLOAD_PREFIXES[method] + "/{name}",
            "bucket": "bench",
            "key": "uploads/" + method + "/{name}",
            "delivery": "redirect" if method == "multipart" else method,
            "access": "authenticated",
            "methods": ["GET", "HEAD", "POST" if method == "multipart" else "PUT"],
            "upload": {
                "max_bytes": 64 * 2**20,
                "content_types": [UPLOAD_TYPE],
                "overwrite": True,  # every round uploads to the same key
                "multipart": method == "multipart",
                "part_size": 5 * 2**20,
            },
        }
        for method in UPLOAD_METHODS
    ]


def _mint_token(config: Config, plan: Plan, claims: Mapping[str, Any]) -> str | None:
    if not plan.needs_token:
        return None
    try:
        return issue_token(config.settings.auth, claims, TOKEN_TTL)
    except ValueError:
        raise BenchError(
            "these paths need a token, and the config has no HS256/384/512 secret to mint "
            "one with: pass --token with a token its issuer signed"
        ) from None


def _run(
    plan: Plan,
    token: str | None,
    env: Mapping[str, str],
    out: Path,
    rounds: int,
    about: str,
    engines: Sequence[str] = ENGINES,
    upload_sizes: Sequence[int] = (),
    edge: str | None = None,
    edge_s3_requests: Callable[[], int] | None = None,
) -> int:
    """Measure `plan` with each engine; uploads of `upload_sizes` (the plan has the routes
    for them) with the first engine only. `edge`: the CloudFront origin the cloudfront
    method's URLs lead to; `edge_s3_requests`, what it has asked S3 so far, where seen."""
    out.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    runs: dict[str, dict[str, list[View]]] = {}
    sizes: list[int] = []
    uploads: list[UploadRun] = []
    for engine in engines:
        print(f"s3.engine: {engine}", file=sys.stderr)
        config = {**plan.config, "s3": {**plan.config.get("s3", {}), "engine": engine}}
        with (
            tempfile.TemporaryDirectory(prefix="s3-proxy-bench-") as workdir,
            ProxyProcess(config, Path(workdir), env) as proxy,
        ):
            target = Target(
                proxy.base, proxy.pid, plan.paths, headers, plan.methods, edge, edge_s3_requests
            )
            try:
                sizes, runs[engine] = asyncio.run(measure(target, rounds))
                if upload_sizes and engine == engines[0]:
                    uploads = asyncio.run(measure_uploads(target, upload_sizes, rounds))
            except aiohttp.ClientError as exc:  # the metrics endpoint: the proxy itself is gone
                tail = proxy.output_tail()
                raise BenchError(f"lost the proxy ({exc}); its last output:{tail}") from None
    results = runs[engines[0]]
    objects = list(zip(plan.paths, sizes, strict=True))
    notes = [about, f"s3.engine: {engines[0]}", *plan.notes]
    picture = chart(results, objects, out)
    linked = picture.name if picture else None
    text = report(results, objects, rounds, notes, chart=linked)
    if uploads:
        text += "\n" + upload_report(uploads, rounds)
    if len(runs) > 1:
        text += "\n" + engine_report(runs)
    (out / "report.md").write_text(text)
    raw = {m: [v.__dict__ for v in views] for m, views in results.items()}
    (out / "results.json").write_text(json.dumps(raw, indent=1))
    by_engine = {e: {m: [v.__dict__ for v in vs] for m, vs in r.items()} for e, r in runs.items()}
    (out / "engines.json").write_text(json.dumps(by_engine, indent=1))
    if uploads:
        (out / "uploads.json").write_text(json.dumps([u.__dict__ for u in uploads], indent=1))
    print(text)
    print(
        f"report: {out / 'report.md'}"
        + (f", chart: {picture}" if picture else f" (no chart: {CHARTS_NEED})")
    )
    return 0
