"""Where the proxy's CPU goes on the 10 KiB stream and redirect paths, and A/B CPU per request.

    .venv/bin/python benchmarks/profile_paths.py cpu [--against DIR ...] [--peer naive --peer bare]
    .venv/bin/python benchmarks/profile_paths.py callgrind [--against DIR ...] [--peer ...]
        [--path stream|redirect|cached|large ...]
    .venv/bin/python benchmarks/profile_paths.py cprofile [--out DIR]
    .venv/bin/python benchmarks/profile_paths.py pyspy [--out DIR]

The same set-up as `run.sh` (benchmarks/harness): a static nginx backend on a free port, the
proxy (`python -m proxy serve` on the bench's generated config) pinned to CPU 0 and wrk on
CPU 1, `-t1 -c64`, one Bearer JWT on every request.

- `cpu`: the server's CPU time per request (utime+stime from /proc around each wrk run), for
  this checkout and each `--against` tree (another checkout or a `git worktree` of an older
  commit, run with this venv), runs alternated so that every tree sees the same machine.
  On a shared machine CPU per request is the figure to compare, not req/s.
- `cprofile`: the proxy under cProfile while wrk drives each path; one pstats file per path
  and a summary by cumulative and own time. cProfile's overhead inflates small functions:
  read its shares, not its absolute microseconds.
- `pyspy`: the same under `py-spy record` (sampling, low overhead), as speedscope JSON and
  a flat own-time summary (`pip install py-spy`; not a project dependency).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from harness import backends, proxyconf
from harness.load import run_wrk, write_wrk_script
from harness.procs import Server, free_port, run_command, tree_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
PATHS = {"stream": "/s/10k.bin", "redirect": "/r/10k.bin", "cached": "/c/10k.bin"}
# The 100 MiB object through the stream route: `callgrind --path large` only (the wrk modes
# time small requests), a few sequential downloads, reported per 100 MiB.
LARGE_PATH = "/s/100m.bin"
LARGE_WARMUP, LARGE_COUNT = 2, 5
# The peers that set issue 26's marks, each on the path it is compared on.
PEERS = {
    "naive": ROOT / "benchmarks" / "peers" / "naive_proxy.py",
    "bare": ROOT / "benchmarks" / "peers" / "bare_302.py",
}
PEER_PATHS = {"naive": "stream", "bare": "redirect"}
Tree = tuple[str, Path | None]  # a label and a source tree; None: the peer of that name


def _paths(label: str, tree: Path | None) -> dict[str, str]:
    if tree is None:
        return {PEER_PATHS[label]: PATHS[PEER_PATHS[label]]}
    return PATHS


POOL = 128


def _env(base: Path, secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret-key",  # noqa: S106 - a dummy: nginx ignores it
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(base / "aws-config-absent"),
        AWS_SHARED_CREDENTIALS_FILE=str(base / "aws-credentials-absent"),
        JWT_SECRET=secret,
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _small_objects(base: Path) -> Path:
    bucket = base / "docroot" / backends.BUCKET
    bucket.mkdir(parents=True)
    (bucket / backends.SMALL_KEY).write_bytes(os.urandom(backends.SMALL_SIZE))
    block = os.urandom(1024 * 1024)  # the 100 MiB object: random, incompressible
    with (bucket / backends.LARGE_KEY).open("wb") as out:
        for _ in range(backends.LARGE_SIZE // len(block)):
            out.write(block)
    for path in (base, base / "docroot", bucket):
        path.chmod(0o755)
    for path in bucket.iterdir():
        path.chmod(0o644)
    return base / "docroot"


class Setup:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.logs = base / "logs"
        self.logs.mkdir()
        self.secret = proxyconf.new_secret()
        self.script = write_wrk_script(base / "bench.lua", proxyconf.mint_token(self.secret))
        self.env = _env(base, self.secret)
        self.taskset = shutil.which("taskset") or "taskset"
        self.wrk = shutil.which("wrk") or "wrk"
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        docroot = _small_objects(base)
        port = free_port()
        prefix = base / "backend"
        self.backend = Server(
            name="backend",
            argv=backends.nginx_argv(nginx, prefix, backends.static_config(prefix, port, docroot)),
            port=port,
            cpus="1",
            log_dir=self.logs,
        )
        self.backend.start(self.taskset)

    def proxy(self, name: str, tree: Path, wrap: list[str] | None = None) -> Server:
        port = free_port()
        config = proxyconf.proxy_config(
            port=port, backend_url=f"http://127.0.0.1:{self.backend.port}", pool=POOL
        )
        path = proxyconf.write_config(self.base / f"{name}.yaml", config)
        argv = [*(wrap or [sys.executable]), "-m", "proxy", "serve", "--config", str(path)]
        server = Server(
            name=name, argv=argv, port=port, cpus="0", log_dir=self.logs, env=self.env, cwd=tree
        )
        server.ready_timeout = 120 if wrap else 20  # valgrind and profilers start slowly
        server.start(self.taskset)
        return server

    def peer(self, name: str, wrap: list[str] | None = None) -> Server:
        """A peer from benchmarks/peers (naive: the stream path's, bare: the redirect's)."""
        port = free_port()
        argv = [*(wrap or [sys.executable]), str(PEERS[name]), "--port", str(port)]
        if name == "naive":
            argv += ["--backend", f"http://127.0.0.1:{self.backend.port}", "--pool", str(POOL)]
        server = Server(
            name=name, argv=argv, port=port, cpus="0", log_dir=self.logs, env=self.env, cwd=ROOT
        )
        server.ready_timeout = 120 if wrap else 20
        server.start(self.taskset)
        return server

    def start(self, label: str, tree: Path | None, wrap: list[str] | None = None) -> Server:
        if tree is None:
            return self.peer(label, wrap)
        return self.proxy(f"proxy-{label}", tree, wrap)

    def load(self, server: Server, path: str, seconds: float) -> tuple[int, float]:
        """(requests, server CPU seconds) of one wrk run."""
        before = tree_cpu_seconds(server.pid)
        result = run_wrk(
            wrk=self.wrk,
            taskset=self.taskset,
            cpus="1",
            url=f"http://127.0.0.1:{server.port}{path}",
            script=self.script,
            connections=64,
            duration_s=seconds,
            timeout_s=5,
        )
        used = tree_cpu_seconds(server.pid) - before
        if result.error_count or result.non_2xx_3xx:
            print(f"  ! {result.error_count} errors, {result.non_2xx_3xx} non-2xx/3xx", flush=True)
        return result.requests, used


def cpu(setup: Setup, trees: list[Tree], rounds: int, seconds: float) -> None:
    servers = [(label, tree, setup.start(label, tree)) for label, tree in trees]
    figures: dict[tuple[str, str], list[float]] = {}
    try:
        for label, tree, server in servers:
            for path in _paths(label, tree).values():
                setup.load(server, path, 1)  # warm-up
        for number in range(rounds):
            order = servers if number % 2 == 0 else servers[::-1]
            for what, path in PATHS.items():
                for label, tree, server in order:
                    if what not in _paths(label, tree):
                        continue
                    requests, used = setup.load(server, path, seconds)
                    per = used / max(requests, 1) * 1e6
                    figures.setdefault((label, what), []).append(per)
                    print(f"{label:>12} {what:8} {requests / seconds:8.0f} req/s {per:7.1f} us/req")
    finally:
        for _, _, server in servers:
            server.stop()
    print("\nmedian CPU us/request (all rounds):")
    for what in PATHS:
        cells = []
        for label, tree in trees:
            if what not in _paths(label, tree):
                continue
            values = sorted(figures[(label, what)])
            cells.append(f"{label} {values[len(values) // 2]:.1f} (min {values[0]:.1f})")
        print(f"  {what:8} " + " | ".join(cells))


def cprofile(setup: Setup, out: Path, seconds: float) -> None:
    import pstats

    for what, path in PATHS.items():
        stats = out / f"{what}.pstats"
        wrap = [sys.executable, "-m", "cProfile", "-o", str(stats)]
        server = setup.proxy(f"cprofile-{what}", ROOT, wrap)
        try:
            setup.load(server, path, 1)
            requests, used = setup.load(server, path, seconds)
        finally:
            server.stop(grace=30)  # SIGTERM: cProfile writes its file on the way out
        print(
            f"== {what}: {requests} requests, {used / max(requests, 1) * 1e6:.0f} us/req profiled"
        )
        report = pstats.Stats(str(stats))
        report.sort_stats("tottime").print_stats(45)
        report.sort_stats("cumulative").print_stats(60)


def pyspy(setup: Setup, out: Path, seconds: float) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    for what, path in PATHS.items():
        server = setup.proxy(f"pyspy-{what}", ROOT)
        try:
            setup.load(server, path, 1)
            record = subprocess.Popen(  # noqa: S603
                [
                    spy,
                    "record",
                    "-p",
                    str(server.pid),
                    "-r",
                    "250",
                    "-f",
                    "raw",
                    "--nonblocking",
                    "-o",
                    str(out / f"{what}.folded"),
                    "-d",
                    str(int(seconds) + 1),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.3)
            requests, used = setup.load(server, path, seconds)
            record.wait(seconds + 30)
        finally:
            server.stop()
        per_request = used / max(requests, 1) * 1e6
        print(f"== {what}: {requests} requests, {per_request:.0f} us/req")
        summarize(out / f"{what}.folded", per_request)
        parts(out / f"{what}.folded", per_request)


# The parts of a request the issue asks about, each by the functions that do it. A sample
# counts for the part of its innermost frame that names one (so signing inside the S3
# client counts as signing); samples in none of them are the event loop and aiohttp itself.
PARTS = (
    ("routing (raw path -> route, params)", ("Router.match", "PathPattern.match")),
    (
        "token check (extract, verify, cache)",
        (
            "Access.optional_claims",
            "extract_token",
            "TokenVerifier.",
            "check_times",
            "check_clock",
            "_note_caller",
        ),
    ),
    ("rule and key (authorize, render)", ("authorize", "KeyTemplate.render", "object_of")),
    ("revocation lookup", ("State.check_token", "RevocationList.", "lifetime_refusal")),
    ("rate limits", ("Access.limit", "MemoryState.take", "RateLimiter.", "buckets")),
    ("stream lease", ("acquire_stream", "release_stream", "StreamSlots.")),
    (
        "sandboxing and object headers",
        ("object_headers", "presentation", "safe_content_type", "InlineTypes.", "essence"),
    ),
    ("preconditions and ranges", ("has_preconditions", "_check_preconditions", "parse_ranges")),
    ("S3 signing (SigV4 head)", ("_signed", "sign_request", "_signature")),
    (
        "S3 client (pool, HTTP/1.1 parse)",
        ("Pool.", "_Connection.", "Response.read", "_Body.", "_meta_from_headers"),
    ),
    (
        "S3 call accounting (retries, deadline)",
        ("BuiltinStorage._send", "ResponseHeadDeadline", "ErrorTranslation"),
    ),
    (
        "redirect signing (lifetime, link cache)",
        (
            "Redirect.",
            "sign_link",
            "link_lifetime",
            "plan_lifetime",
            "LinkCache.",
            "redirect_response",
            "signed_overrides",
        ),
    ),
    (
        "Prometheus series",
        ("Telemetry.", "MeasuredStorage.", "MutexValue", "Counter.inc", "Histogram.observe"),
    ),
    ("access line", ("write_access_line", "LineWriter", "_timestamp", "_encode")),
    (
        "response writing (aiohttp)",
        ("StreamResponse.", "Response.", "StreamWriter.", "send_object", "WriteDeadline"),
    ),
    (
        "the Gateway's own steps",
        (
            "Gateway.",
            "_Surfaces.",
            "Downloads.",
            "Stream.answer",
            "RequestContext",
            "edge_refusal",
            "new_request_id",
        ),
    ),
    (
        "edge (head checks, deadlines)",
        ("EdgeProtocol.", "EdgeServer.", "check_head", "EdgeRequest"),
    ),
)


def parts(folded: Path, per_request: float) -> None:
    """Each part's share of the samples, in microseconds of the measured CPU per request."""
    counts: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        total += int(count)
        part = "event loop, aiohttp's server, kernel (socket I/O)"
        for frame in reversed(stack.split(";")):
            name = frame.split(" (", 1)[0]
            found = next(
                (title for title, names in PARTS if any(_names(name, n) for n in names)), None
            )
            if found is not None:
                part = found
                break
        counts[part] += int(count)
    print(f"-- by part ({total} samples, {per_request:.0f} us/request)")
    for part, count in counts.most_common():
        print(f"{count / total * 100:5.1f}% {count / total * per_request:6.1f} us  {part}")


def _names(frame: str, name: str) -> bool:
    """`Pool.` names a class's methods; a bare name a function (or any class's method)."""
    if name.endswith("."):
        return frame.startswith(name)
    return frame == name or frame.endswith("." + name)


def summarize(folded: Path, per_request: float, top: int = 60) -> None:
    """Each function's share of the samples (inclusive, then own), as microseconds of the
    measured CPU per request. py-spy samples wall time of a running process: on a busy
    machine time the process waited for CPU 0 is spread over whatever it was doing."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        total += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
        own[frames[-1]] += int(count)
    for title, table in (("inclusive", inclusive), ("own", own)):
        print(f"-- {title} ({total} samples)")
        for frame, count in table.most_common(top):
            share = count / total
            print(f"{share * 100:5.1f}% {share * per_request:6.1f} us  {frame}")


def _sequential(port: int, path: str, token: str, count: int) -> None:
    """`count` GETs one after another on one keep-alive connection, bodies read."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for _ in range(count):
            connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            while response.read(1 << 20):  # a 100 MiB body is not kept whole
                pass
            if response.status not in (200, 302):
                raise RuntimeError(f"{path}: status {response.status}")
    finally:
        connection.close()


def callgrind(setup: Setup, trees: list[Tree], count: int, keep: Path, only: list[str]) -> None:
    """Instructions per request (user space; deterministic, unlike time): each tree's proxy
    under callgrind, instrumentation switched on after a warm-up, then `count` sequential
    requests per path."""
    control = shutil.which("callgrind_control") or "callgrind_control"
    token = proxyconf.mint_token(setup.secret)
    for label, tree in trees:
        paths = dict(_paths(label, tree))
        if tree is not None and "large" in only:
            paths["large"] = LARGE_PATH
        for what, path in paths.items():
            if only and what not in only:
                continue
            large = what == "large"
            warmup, requests = (LARGE_WARMUP, LARGE_COUNT) if large else (300, count)
            out = keep / f"callgrind-{label}-{what}.out"
            wrap = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
            ]
            server = setup.start(label, tree, wrap)
            try:
                _sequential(server.port, path, token, warmup)
                run_command([control, "-i", "on", str(server.pid)], timeout=60)
                _sequential(server.port, path, token, requests)
                run_command([control, "-i", "off", str(server.pid)], timeout=60)
            finally:
                server.stop(grace=60)
            total = 0
            for line in out.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    total = int(line.split()[1])
            if large:  # kernel copies (recv, send) are not counted: user space only
                per = f"{total / requests:13,.0f} instructions per 100 MiB"
            else:
                per = f"{total / requests:10.0f} instructions/request"
            print(f"{label:>12} {what:8} {per}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["cpu", "cprofile", "pyspy", "callgrind"])
    parser.add_argument("--against", action="append", default=[], metavar="DIR")
    parser.add_argument("--peer", action="append", default=[], choices=sorted(PEERS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--path", action="append", default=[], choices=[*sorted(PATHS), "large"])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "proxy-profile")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="proxy-profile-"))
    setup = Setup(base)
    try:
        trees: list[Tree] = [("this", ROOT)]
        trees += [(Path(p).name, Path(p).resolve()) for p in args.against]
        trees += [(name, None) for name in args.peer]
        if args.mode == "cpu":
            cpu(setup, trees, args.rounds, args.seconds)
        elif args.mode == "callgrind":
            args.out.mkdir(parents=True, exist_ok=True)
            callgrind(setup, trees, args.count, args.out, args.path)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            (cprofile if args.mode == "cprofile" else pyspy)(setup, args.out, args.seconds)
    finally:
        setup.backend.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
