"""The benchmark run: start the backend and the peers, measure in phases, stop everything,
write the report. Progress goes to stderr; the report to --out and to stdout."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from . import backends, baseline, logscan, machine, proxyconf
from .backends import LARGE_KEY, LARGE_SIZE, SMALL_KEY
from .load import (
    Expect,
    WrkError,
    concurrent_downloads,
    probe,
    run_wrk,
    ttfb_first_byte,
    ttfb_headers,
    write_wrk_script,
)
from .model import (
    BARE,
    BOTO,
    DIRECT,
    LARGE,
    NAIVE,
    NGINX,
    PROXY,
    PROXY_AUDIT,
    PROXY_BOTO_ENGINE,
    PROXY_CACHED,
    PROXY_REDIRECT,
    PROXY_STREAM,
    SMALL_REDIRECT,
    SMALL_STREAM,
    Results,
    Row,
    RssRow,
    RssRun,
    Sample,
    Settings,
    TtfbRow,
    at_baseline,
)
from .procs import (
    Server,
    ServerError,
    busiest_others,
    free_port,
    other_processes,
    steal_seconds,
)
from .report import render

BENCH_DIR = Path(__file__).resolve().parents[1]
ROOT = BENCH_DIR.parent
PEERS = BENCH_DIR / "peers"
DEFAULT_OUT = BENCH_DIR / "results" / "latest.md"
POOL = 128  # connections from each Python proxy to the backend


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bash benchmarks/run.sh",
        description="Benchmark s3-private-proxy against nginx, a naive aiohttp proxy, an "
        "aiobotocore proxy and a bare 302 handler; write a Markdown report.",
    )
    parser.add_argument("--quick", action="store_true", help="1 run, short durations (~2 min)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report path")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, --quick 1)")
    parser.add_argument("--seconds", type=int, help="wrk duration per run (default 5, quick 2)")
    parser.add_argument(
        "--proxy-set",
        action="append",
        default=[],
        metavar="KEY.PATH=YAML",
        help="extra proxy config, e.g. listen.workers=2 or 'routes.bench-stream.cache={...}'",
    )
    parser.add_argument(
        "--rss-cap-mib",
        type=int,
        default=4096,
        help="stop a server in the memory test once its RSS passes this (default 4096)",
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp dir and logs")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure the proxy at commit REF (built once into its own venv), its runs "
        "alternated with the checkout's, and report each figure's change",
    )
    parser.add_argument(
        "--baseline-cache",
        type=Path,
        default=None,
        help=f"where baseline builds are kept (default {baseline.default_cache()})",
    )
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    try:  # a mistake here should stop the run before anything starts
        overrides = [proxyconf.parse_assignment(item) for item in args.proxy_set]
        dummy = proxyconf.proxy_config(port=0, backend_url="http://127.0.0.1:1", pool=POOL)
        proxyconf.with_overrides(dummy, overrides)
    except (ValueError, KeyError) as exc:
        parser.error(f"--proxy-set: {exc}")
    return args


class Progress:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(
            f"[bench {time.monotonic() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True
        )


@dataclass(frozen=True)
class Tools:
    nginx: str
    wrk: str
    taskset: str


def find_tools() -> Tools:
    found: dict[str, str] = {}
    for name in ("nginx", "wrk", "taskset"):
        path = shutil.which(name) or next(
            (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
        )
        if path is None:
            raise SystemExit(f"{name} not found: run the benchmark with `bash benchmarks/run.sh`")
        found[name] = path
    return Tools(**found)


@dataclass(frozen=True)
class Case:
    """One row of a throughput table: a workload against one server."""

    table: str
    label: str
    server: str
    path: str
    expect: Expect
    connections: int
    seconds: int


class Bench:
    def __init__(
        self, args: argparse.Namespace, tools: Tools, base: Path, log: Progress, cpus: list[int]
    ) -> None:
        self.args = args
        self.tools = tools
        self.base = base
        self.log = log
        self.cpus = cpus  # usable CPUs when the run started
        self.server_cpu = str(cpus[0])
        self.load_cpu = str(cpus[1] if len(cpus) > 1 else cpus[0])
        self.backend_cpu = str(cpus[2] if len(cpus) > 2 else self.load_cpu)
        self.all_cpus = ",".join(str(c) for c in cpus)
        quick = bool(args.quick)
        runs = args.runs or (1 if quick else 3)
        seconds = args.seconds or (2 if quick else 5)
        self.settings = Settings(
            quick=quick,
            runs=runs,
            small_seconds=seconds,
            large_seconds=seconds,
            warmup_seconds=1,
            small_connections=64,
            large_connections=4,
            ttfb_small_samples=50 if quick else 200,
            ttfb_large_samples=5 if quick else 15,
            downloads=100,
            downloads_bound_s=5.0 if quick else 6.0,
            rss_cap_mib=args.rss_cap_mib,
            server_cpu=self.server_cpu,
            load_cpu=self.load_cpu,
            backend_cpu=self.backend_cpu,
            proxy_overrides=list(args.proxy_set),
        )
        self.results = Results(settings=self.settings)
        self.servers: dict[str, Server] = {}
        self.stopped: list[Server] = []  # kept for the log scan at the end
        self.logs = base / "logs"
        self.logs.mkdir()
        self.secret = proxyconf.new_secret()
        self.token = proxyconf.mint_token(self.secret)
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.overrides = [proxyconf.parse_assignment(item) for item in args.proxy_set]
        self.backend_url = ""
        self.objects: backends.Objects | None = None
        self.proxy_unavailable = ""  # why the proxy is not running, when it is not
        self.wrk_script = write_wrk_script(base / "bench.lua", self.token)
        self.baseline: baseline.Baseline | None = None
        if len(cpus) < 2:
            self.incident("only one usable CPU: server and load generator share it")

    # --- bookkeeping -------------------------------------------------------------------------

    def incident(self, text: str) -> None:
        self.results.incidents.append(text)
        self.log(f"INCIDENT: {text}")

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.log(f"== {name}")
        start = time.monotonic()
        try:
            yield
        finally:
            self.results.phases.append((name, time.monotonic() - start))

    def python_env(self) -> dict[str, str]:
        """The environment of the Python servers: dummy AWS credentials, nothing from the
        caller's AWS profile, no instance-metadata lookups, no .pyc files written."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench-secret-key",  # noqa: S106 - a dummy: nginx ignores it
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(self.base / "aws-config-absent"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.base / "aws-credentials-absent"),
            JWT_SECRET=self.secret,
            PYTHONDONTWRITEBYTECODE="1",
        )
        return env

    # --- servers -----------------------------------------------------------------------------

    def _nginx(self, name: str, cpus: str, text: Callable[[Path, int], str]) -> Server:
        port = free_port()
        prefix = self.base / name
        return Server(
            name=name,
            argv=backends.nginx_argv(self.tools.nginx, prefix, text(prefix, port)),
            port=port,
            cpus=cpus,
            log_dir=self.logs,
        )

    def _python(
        self, name: str, argv: list[str], cpus: str, port: int, base: bool = False
    ) -> Server:
        """A Python server: the checkout's interpreter in the checkout, or with `base`, the
        baseline's own venv in the baseline's tree."""
        python, cwd = sys.executable, ROOT
        if base and self.baseline is not None:
            python, cwd = str(self.baseline.python), self.baseline.root
        return Server(
            name=name,
            argv=[python, *argv],
            port=port,
            cpus=cpus,
            log_dir=self.logs,
            env=self.python_env(),
            cwd=cwd,
        )

    def make_server(self, key: str, name: str | None = None, cpus: str | None = None) -> Server:
        cpus = cpus or self.server_cpu
        name = name or key
        assert self.objects is not None
        docroot = self.objects.docroot
        if key == "backend":
            return self._nginx(
                name, self.backend_cpu, lambda p, port: backends.static_config(p, port, docroot)
            )
        if key == "direct":
            return self._nginx(name, cpus, lambda p, port: backends.static_config(p, port, docroot))
        if key == "nginx":
            backend_port = self.servers["backend"].port
            return self._nginx(
                name, cpus, lambda p, port: backends.proxy_pass_config(p, port, backend_port)
            )
        port = free_port()
        if key == "naive":
            argv = [str(PEERS / "naive_proxy.py"), "--port", str(port)]
            argv += ["--backend", self.backend_url, "--pool", str(POOL)]
            return self._python(name, argv, cpus, port)
        if key == "boto":
            argv = [str(PEERS / "aiobotocore_proxy.py"), "--port", str(port)]
            argv += ["--endpoint", self.backend_url, "--pool", str(POOL)]
            return self._python(name, argv, cpus, port)
        if key == "bare":
            return self._python(name, [str(PEERS / "bare_302.py"), "--port", str(port)], cpus, port)
        raise ValueError(key)

    def proxy_config(self, port: int, extra: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
        base = proxyconf.proxy_config(port=port, backend_url=self.backend_url, pool=POOL)
        return proxyconf.with_overrides(base, [*self.overrides, *extra])

    def make_proxy(
        self, name: str, cpus: str, extra: Sequence[tuple[str, Any]] = (), base: bool = False
    ) -> Server | str:
        """The proxy on a generated config, or why it cannot run (`check` refused the config).
        With `base`, the baseline's proxy on the same config."""
        port = free_port()
        path = proxyconf.write_config(self.base / f"{name}.yaml", self.proxy_config(port, extra))
        if base and self.baseline is not None:
            python, cwd = str(self.baseline.python), self.baseline.root
        else:
            python, cwd = sys.executable, ROOT
        checked = proxyconf.check_config(path, self.python_env(), cwd, python)
        if not checked.ok:
            return f"`python -m proxy check` refused the generated config: {checked.output}"
        if name == "proxy":
            self.results.proxy_config = path.read_text()
        argv = ["-m", "proxy", "serve", "--config", str(path)]
        return self._python(name, argv, cpus, port, base)

    def start(self, key: str, server: Server) -> bool:
        try:
            server.start(self.tools.taskset)
        except ServerError as exc:
            self.incident(f"{server.name} did not start: {exc}")
            self.stopped.append(server)
            return False
        self.servers[key] = server
        return True

    def stop(self, key: str) -> None:
        server = self.servers.pop(key, None)
        if server is not None:
            server.stop()
            self.stopped.append(server)

    def stop_all(self) -> None:
        for key in reversed(list(self.servers)):
            self.stop(key)

    def healthy(self, key: str) -> bool:
        """True when the server is up; a server found dead is reported and restarted once."""
        server = self.servers.get(key)
        if server is None:
            return False
        if server.alive():
            return True
        self.incident(
            f"{server.name} died (exit status {server.exit_status()}); "
            f"stderr: {server.stderr_tail()}"
        )
        server.stop()
        self.stopped.append(server)
        del self.servers[key]
        replacement = Server(
            name=f"{server.name}-restarted",
            argv=server.argv,
            port=server.port,
            cpus=server.cpus,
            log_dir=server.log_dir,
            env=server.env,
            cwd=server.cwd,
        )
        return self.start(key, replacement)

    def url(self, key: str, path: str) -> str:
        return f"http://127.0.0.1:{self.servers[key].port}{path}"

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> Results:
        results = self.results
        source = machine.proxy_source(ROOT), machine.proxy_fingerprint(ROOT)
        with self.phase("set-up: objects, backend, peers, proxy"):
            self.set_up()
        cases = self.cases()
        with self.phase("throughput (wrk)"):
            self.throughput(cases)
        with self.phase("time to first byte"):
            self.time_to_first_byte()
        self.stop_all_but_backend()
        with self.phase("scaling (listen.workers)"):
            self.scaling()
        with self.phase("memory (100 concurrent 100 MiB downloads)"):
            self.memory()
        now = machine.proxy_source(ROOT), machine.proxy_fingerprint(ROOT)
        if now != source:
            self.incident(
                f"proxy/ changed while the benchmark ran ({source[0]} -> {now[0]}; source digest "
                f"{source[1]} -> {now[1]}): later phases measured other code; rerun for "
                "consistent figures"
            )
        return results

    def set_up(self) -> None:
        self.log(f"objects and configs in {self.base}")
        self.objects = backends.write_objects(self.base)
        self.results.facts = machine.facts(ROOT, self.tools.nginx, self.tools.wrk, self.cpus)
        if self.args.baseline:
            cache = self.args.baseline_cache or baseline.default_cache()
            try:
                self.baseline = baseline.build(ROOT, self.args.baseline, cache, self.log)
            except baseline.BaselineError as exc:
                raise SystemExit(str(exc)) from None
            self.results.baseline = self.baseline.label
            self.results.facts.append(
                ("baseline", f"{self.baseline.commit} ({self.args.baseline})")
            )
        if not self.start("backend", self.make_server("backend")):
            raise SystemExit("the backend nginx did not start; see the incident above")
        self.backend_url = f"http://127.0.0.1:{self.servers['backend'].port}"
        for key in ("direct", "nginx", "naive", "boto", "bare"):
            self.start(key, self.make_server(key))
        proxy = self.make_proxy("proxy", self.server_cpu)
        if isinstance(proxy, str):
            self.incident(proxy)
            self.proxy_unavailable = proxy
        elif not self.start("proxy", proxy):
            self.proxy_unavailable = f"did not start: {proxy.stderr_tail()}"
        if self.baseline is not None:
            base = self.make_proxy("proxy-base", self.server_cpu, base=True)
            if isinstance(base, str):
                self.incident(f"baseline: {base}")
            else:
                self.start("proxy-base", base)
        # The same proxy and config with the other S3 engine (the default is builtin).
        engine = self.make_proxy("proxy-boto", self.server_cpu, [("s3.engine", "aiobotocore")])
        if isinstance(engine, str):
            self.incident(engine)
        else:
            self.start("proxy-boto", engine)
        # The same proxy writing the audit trail (issue 24), for its cost on the stream path.
        audited = self.make_proxy(
            "proxy-audit", self.server_cpu, [("audit.path", str(self.base / "audit.jsonl"))]
        )
        if isinstance(audited, str):
            self.incident(f"audit trail row: {audited}")
        else:
            self.start("proxy-audit", audited)
        self.log(f"servers up: {', '.join(f'{k}:{s.port}' for k, s in self.servers.items())}")

    def cases(self) -> list[Case]:
        assert self.objects is not None
        s = self.settings
        small = Expect(200, body=self.objects.small)
        large = Expect(200, length=LARGE_SIZE)
        redirect = Expect(302, location=True)
        sk, lk = SMALL_KEY, LARGE_KEY
        n_small, n_large = s.small_connections, s.large_connections
        t_small, t_large = s.small_seconds, s.large_seconds
        cases = [
            Case(SMALL_STREAM, DIRECT, "direct", f"/bench/{sk}", small, n_small, t_small),
            Case(SMALL_STREAM, NGINX, "nginx", f"/s/{sk}", small, n_small, t_small),
            Case(SMALL_STREAM, NAIVE, "naive", f"/s/{sk}", small, n_small, t_small),
            Case(SMALL_STREAM, BOTO, "boto", f"/s/{sk}", small, n_small, t_small),
            Case(SMALL_STREAM, PROXY_STREAM, "proxy", f"/s/{sk}", small, n_small, t_small),
            Case(
                SMALL_STREAM, PROXY_BOTO_ENGINE, "proxy-boto", f"/s/{sk}", small, n_small, t_small
            ),
            Case(SMALL_STREAM, PROXY_AUDIT, "proxy-audit", f"/s/{sk}", small, n_small, t_small),
            Case(SMALL_STREAM, PROXY_CACHED, "proxy", f"/c/{sk}", small, n_small, t_small),
            Case(SMALL_REDIRECT, BARE, "bare", f"/r/{sk}", redirect, n_small, t_small),
            Case(SMALL_REDIRECT, PROXY_REDIRECT, "proxy", f"/r/{sk}", redirect, n_small, t_small),
            Case(LARGE, DIRECT, "direct", f"/bench/{lk}", large, n_large, t_large),
            Case(LARGE, NGINX, "nginx", f"/s/{lk}", large, n_large, t_large),
            Case(LARGE, NAIVE, "naive", f"/s/{lk}", large, n_large, t_large),
            Case(LARGE, BOTO, "boto", f"/s/{lk}", large, n_large, t_large),
            Case(LARGE, PROXY_STREAM, "proxy", f"/s/{lk}", large, n_large, t_large),
            Case(LARGE, PROXY_BOTO_ENGINE, "proxy-boto", f"/s/{lk}", large, n_large, t_large),
        ]
        return self.with_baseline(cases)

    def with_baseline(self, cases: list[Case]) -> list[Case]:
        """With --baseline, each of the proxy's own cases is preceded by the same case on the
        baseline: every run then alternates baseline, current, baseline, current."""
        if self.baseline is None:
            return cases
        out: list[Case] = []
        for case in cases:
            if case.server == "proxy":
                out.append(replace(case, label=at_baseline(case.label), server="proxy-base"))
            out.append(case)
        return out

    def wrk(self, case: Case, row: Row, seconds: int) -> Sample | None:
        server = self.servers[case.server]
        others_before = other_processes(os.getpid())
        steal_before = steal_seconds(int(self.server_cpu))
        before = server.cpu_seconds()
        try:
            result = run_wrk(
                wrk=self.tools.wrk,
                taskset=self.tools.taskset,
                cpus=self.load_cpu,
                url=self.url(case.server, case.path),
                script=self.wrk_script,
                connections=case.connections,
                duration_s=seconds,
                timeout_s=10 if case.table == LARGE else 5,
            )
        except (WrkError, OSError) as exc:
            self.incident(f"{case.table} / {row.label}: {exc}")
            return None
        cpu = server.cpu_seconds() - before
        others = busiest_others(others_before, other_processes(os.getpid()))
        foreign = sum(seconds for _, seconds in others)
        steal = steal_seconds(int(self.server_cpu)) - steal_before
        measured = seconds == case.seconds  # not a warm-up
        if measured and foreign > 0.05 * result.duration_s:
            top = ", ".join(f"{name} {sec / result.duration_s:.0%}" for name, sec in others[:3])
            self.incident(
                f"{case.table} / {row.label}: other processes used "
                f"{foreign / result.duration_s:.0%} of a core during the run ({top}): the "
                "machine was not idle, this figure may be low"
            )
        if measured and steal > 0.05 * result.duration_s:
            self.incident(
                f"{case.table} / {row.label}: the hypervisor stole "
                f"{steal / result.duration_s:.0%} of CPU {self.server_cpu} during the run"
            )
        if result.error_count or result.non_2xx_3xx:
            errors = {k: v for k, v in result.errors.items() if v}
            self.incident(
                f"{case.table} / {row.label}: wrk saw errors {errors or ''}"
                f"{f' and {result.non_2xx_3xx} non-2xx/3xx answers' if result.non_2xx_3xx else ''}"
                f" in {result.requests} requests"
            )
        if not server.alive():
            self.healthy(case.server)
        return Sample(result, cpu, foreign, steal)

    def prepare(self, case: Case, row: Row) -> bool:
        """Sanity probe, then warm-up. False (with the reason in the row) when not usable."""
        if case.server not in self.servers:
            row.skipped = (
                self.proxy_unavailable if case.server == "proxy" else "server did not start"
            )
            return False
        error = probe(self.url(case.server, case.path), self.headers, case.expect)
        if error:
            row.skipped = f"sanity check failed: {error}"
            self.incident(f"{case.table} / {row.label}: {row.skipped}")
            return False
        self.wrk(case, row, self.settings.warmup_seconds)
        return self.healthy(case.server)

    def throughput(self, cases: list[Case]) -> None:
        usable: list[tuple[Case, Row]] = []
        for case in cases:
            row = self.results.row(case.table, case.label)
            if self.prepare(case, row):
                usable.append((case, row))
        for run in range(self.settings.runs):
            for case, row in usable:
                if not self.healthy(case.server):
                    continue
                sample = self.wrk(case, row, case.seconds)
                if sample is None:
                    continue
                row.samples.append(sample)
                w = sample.wrk
                rate = f"{w.mb_per_s:,.0f} MB/s" if case.table == LARGE else f"{w.rps:,.0f} req/s"
                cpu = sample.cpu_s / w.requests * 1e6 if w.requests else float("nan")
                self.log(
                    f"run {run + 1}/{self.settings.runs} {case.table:22} {row.label:32} "
                    f"{rate:>14}  {cpu:8.0f} µs CPU/req  errors {w.error_count + w.non_2xx_3xx}"
                )

    def time_to_first_byte(self) -> None:
        s = self.settings
        plan = [
            (DIRECT, "direct", f"/bench/{SMALL_KEY}", 200, f"/bench/{LARGE_KEY}"),
            (NGINX, "nginx", f"/s/{SMALL_KEY}", 200, f"/s/{LARGE_KEY}"),
            (NAIVE, "naive", f"/s/{SMALL_KEY}", 200, f"/s/{LARGE_KEY}"),
            (BOTO, "boto", f"/s/{SMALL_KEY}", 200, f"/s/{LARGE_KEY}"),
            *(
                [
                    (
                        at_baseline(PROXY_STREAM),
                        "proxy-base",
                        f"/s/{SMALL_KEY}",
                        200,
                        f"/s/{LARGE_KEY}",
                    )
                ]
                if self.baseline is not None
                else []
            ),
            (PROXY_STREAM, "proxy", f"/s/{SMALL_KEY}", 200, f"/s/{LARGE_KEY}"),
            (PROXY_BOTO_ENGINE, "proxy-boto", f"/s/{SMALL_KEY}", 200, f"/s/{LARGE_KEY}"),
            (BARE, "bare", f"/r/{SMALL_KEY}", 302, None),
            *(
                [(at_baseline(PROXY_REDIRECT), "proxy-base", f"/r/{SMALL_KEY}", 302, None)]
                if self.baseline is not None
                else []
            ),
            (PROXY_REDIRECT, "proxy", f"/r/{SMALL_KEY}", 302, None),
        ]
        for label, *_ in plan:
            self.results.ttfb[label] = TtfbRow(label)
        for run in range(s.runs):
            for label, key, small, status, large in plan:
                row = self.results.ttfb[label]
                if not self.healthy(key):
                    row.small_skipped = row.large_skipped = "server not running"
                    continue
                result = ttfb_headers(
                    self.url(key, small), self.headers, s.ttfb_small_samples, status
                )
                row.small.append(result)
                if large is None:
                    row.large_skipped = "n/a (a 302)"
                    detail = ""
                else:
                    big = ttfb_first_byte(self.url(key, large), self.headers, s.ttfb_large_samples)
                    row.large.append(big)
                    detail = f", 100 MiB first byte {big.median_ms:.2f} ms"
                for what, count in result.failures.items():
                    self.incident(f"time to first byte / {label}: {count} x {what}")
                self.log(
                    f"run {run + 1}/{s.runs} TTFB {label:32} 10 KiB {result.median_ms:.2f} ms"
                    f"{detail}"
                )

    def stop_all_but_backend(self) -> None:
        for key in [k for k in self.servers if k != "backend"]:
            self.stop(key)

    def scaling(self) -> None:
        scaling = self.results.scaling
        probe_config = self.proxy_config(free_port(), [("listen.workers", 2)])
        path = proxyconf.write_config(self.base / "workers-check.yaml", probe_config)
        checked = proxyconf.check_config(path, self.python_env(), ROOT)
        if not checked.ok:
            first = checked.output.splitlines()[1:2] or checked.output.splitlines()[:1]
            scaling.status = (
                f"not supported yet (`python -m proxy check`: {' '.join(first).strip()})"
            )
            self.log(f"scaling: {scaling.status}")
            return
        one = self.make_proxy("proxy-1-worker", self.server_cpu, [("listen.workers", 1)])
        two = self.make_proxy("proxy-2-workers", self.all_cpus, [("listen.workers", 2)])
        assert self.objects is not None
        expect = Expect(200, body=self.objects.small)
        s = self.settings
        usable: list[tuple[Case, Row]] = []
        for key, server, row in (("w1", one, scaling.one), ("w2", two, scaling.two)):
            if isinstance(server, str):
                row.skipped = server
                continue
            if not self.start(key, server):
                row.skipped = f"did not start: {server.stderr_tail()}"
                continue
            url_path = f"/s/{SMALL_KEY}"
            n, t = s.small_connections, s.small_seconds
            case = Case(SMALL_STREAM, row.label, key, url_path, expect, n, t)
            if self.prepare(case, row):
                usable.append((case, row))
        scaling.status = "measured"
        for run in range(s.runs):
            for case, row in usable:
                if self.healthy(case.server):
                    sample = self.wrk(case, row, case.seconds)
                    if sample is not None:
                        row.samples.append(sample)
                        self.log(
                            f"run {run + 1}/{s.runs} scaling {row.label:28} "
                            f"{sample.wrk.rps:,.0f} req/s"
                        )
        self.stop("w1")
        self.stop("w2")

    def memory(self) -> None:
        s = self.settings
        cap_mib = min(s.rss_cap_mib, machine.available_memory_mib() // 2)
        if cap_mib < s.rss_cap_mib:
            self.incident(f"memory test cap lowered to {cap_mib} MiB (half the free memory)")
        plan = [(NAIVE, "naive"), (BOTO, "boto"), (PROXY, "proxy")]
        if self.baseline is not None:
            plan.insert(2, (at_baseline(PROXY), "proxy-base"))
        for label, _ in plan:
            self.results.rss[label] = RssRow(label)
        for run in range(s.runs):
            for label, key in plan:
                row = self.results.rss[label]
                name = f"{key}-memory-{run + 1}"
                made = (
                    self.make_proxy(name, self.server_cpu, base=key == "proxy-base")
                    if key.startswith("proxy")
                    else self.make_server(key, name)
                )
                if isinstance(made, str):
                    row.skipped = made
                    continue
                if not self.start(key, made):
                    row.skipped = f"did not start: {made.stderr_tail()}"
                    continue
                try:
                    baseline = made.rss_kib()
                    downloads = concurrent_downloads(
                        self.url(key, f"/s/{LARGE_KEY}"),
                        self.headers,
                        count=s.downloads,
                        bound_s=s.downloads_bound_s,
                        rss_kib=made.rss_kib,
                        cap_kib=cap_mib * 1024,
                    )
                    hwm = made.hwm_kib()
                    if not made.alive():
                        self.incident(
                            f"memory test / {label}: the server died (exit status "
                            f"{made.exit_status()}): {made.stderr_tail()}"
                        )
                finally:
                    self.stop(key)
                row.runs.append(RssRun(baseline, hwm, downloads))
                if downloads.stopped_at_cap:
                    self.incident(
                        f"memory test / {label}: RSS passed the {cap_mib} MiB cap after "
                        f"{downloads.elapsed_s:.1f} s; stopped there"
                    )
                bad = {k: v for k, v in downloads.statuses.items() if k != 200}
                if bad or downloads.errors:
                    self.incident(
                        f"memory test / {label}: statuses {dict(downloads.statuses)}, "
                        f"client errors {dict(downloads.errors)}"
                    )
                self.log(
                    f"run {run + 1}/{s.runs} memory {label:28} idle {baseline / 1024:.0f} MiB, "
                    f"peak {hwm / 1024:.0f} MiB, {downloads.completed}/{s.downloads} completed, "
                    f"{downloads.bytes / 1e9:.1f} GB in {downloads.elapsed_s:.1f} s"
                )

    # --- logs ----------------------------------------------------------------------------------

    def scan_logs(self) -> None:
        """Tracebacks (stdout and stderr: the proxy logs to stdout), nginx error logs, and the
        statuses of the proxy's access log, summarized by kind."""
        for server in self.stopped:
            found = logscan.tracebacks(_read(server.stdout_path) + _read(server.stderr_path))
            if found:
                kinds = "; ".join(f"{n:,} x `{kind}`" for kind, n in found.most_common(4))
                self.incident(f"{server.name}: {found.total():,} traceback block(s): {kinds}")
            error_log = self.base / server.name / "error.log"
            if error_log.exists():
                errors = logscan.nginx_errors(_read(error_log))
                if errors:
                    kinds = "; ".join(f"{n:,} x `{m}`" for m, n in errors.most_common(3))
                    self.incident(f"{server.name} error.log: {errors.total():,} line(s): {kinds}")
        groups: dict[str, list[Server]] = {}
        for server in self.stopped:
            if server.name.startswith("proxy"):
                if "memory" in server.name:
                    phase = "memory test"
                elif "worker" in server.name:
                    phase = "scaling"
                else:
                    phase = "throughput and TTFB"
                groups.setdefault(phase, []).append(server)
        for phase, servers in groups.items():
            statuses: Counter[int] = Counter()
            reasons: Counter[str] = Counter()
            for server in servers:
                got_statuses, got_reasons = logscan.access_log(_read(server.stdout_path))
                statuses.update(got_statuses)
                reasons.update(got_reasons)
            shown = ", ".join(f"{k}: {v:,}" for k, v in sorted(statuses.items()))
            line = f"{phase}: {statuses.total():,} requests logged; statuses {shown}"
            if reasons:
                top = reasons.most_common(5)
                line += "; reasons: " + "; ".join(f"{n:,} x `{r}`" for r, n in top)
            self.results.proxy_log.append(line)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = Progress()
    tools = find_tools()
    # The driver (the asyncio clients) belongs with the load generator.
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[1]})

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    # Explicit handlers: a shell without job control starts background jobs with SIGINT
    # ignored, and an ignored signal would skip the clean-up below.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, terminate)
    base = Path(tempfile.mkdtemp(prefix="s3proxy-bench-"))
    bench = Bench(args, tools, base, log, cpus)
    started = time.monotonic()
    try:
        try:
            bench.run()
        finally:
            log("stopping every server")
            bench.stop_all()
            bench.scan_logs()
        bench.results.total_s = time.monotonic() - started
        report = render(bench.results)
        out: Path = args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        print(report)
        log(f"report written to {out} ({bench.results.total_s:.0f} s)")
    finally:
        if args.keep_temp:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0
