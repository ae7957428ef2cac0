"""The Markdown report: machine, method, one table per workload, targets, incidents."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from .model import (
    BARE,
    BOTO,
    DIRECT,
    LARGE,
    NAIVE,
    NGINX,
    PROXY,
    PROXY_AUDIT,
    PROXY_CACHED,
    PROXY_REDIRECT,
    PROXY_STREAM,
    SMALL_REDIRECT,
    SMALL_STREAM,
    Results,
    Row,
    Sample,
    at_baseline,
    median,
)


def _num(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or not base:
        return "n/a"
    return f"{value / base:.2f}x"


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.0f}%"


def _spread(row: Row, value: Callable[[Sample], float]) -> str:
    spread = row.spread(value)
    return "n/a" if math.isnan(spread) else f"±{spread * 50:.0f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _skipped(row: Row, width: int) -> list[str]:
    return [row.label, f"not measured: {row.skipped or 'no successful run'}"] + [""] * (width - 2)


def _throughput_table(results: Results, name: str, bases: list[str]) -> list[str]:
    rows = results.tables.get(name, {})
    header = ["peer", "req/s", "spread", "CPU µs/req", "server CPU", "p50 ms", "p99 ms", "errors"]
    header += [f"vs {b}" for b in bases]
    out: list[list[str]] = []
    for row in rows.values():
        if not row.measured:
            out.append(_skipped(row, len(header)))
            continue
        cells = [
            row.label,
            _num(row.rps),
            _spread(row, lambda s: s.wrk.rps),
            _num(row.cpu_us_per_request),
            _percent(row.busy),
            _num(row.p50_ms, 2),
            _num(row.p99_ms, 2),
            str(row.errors),
        ]
        for base in bases:
            other = rows.get(base)
            cells.append(_ratio(row.rps, other.rps if other and other.measured else math.nan))
        out.append(cells)
    return _table(header, out)


def _large_table(results: Results) -> list[str]:
    rows = results.tables.get(LARGE, {})
    bases = [BOTO, NGINX]
    header = ["peer", "MB/s", "spread", "CPU ms per 100 MiB", "server CPU", "errors"]
    header += [f"vs {b}" for b in bases]
    out: list[list[str]] = []
    for row in rows.values():
        if not row.measured:
            out.append(_skipped(row, len(header)))
            continue
        cells = [
            row.label,
            _num(row.mb_per_s),
            _spread(row, lambda s: s.wrk.mb_per_s),
            _num(row.cpu_ms_per_large_object, 1),
            _percent(row.busy),
            str(row.errors),
        ]
        for base in bases:
            other = rows.get(base)
            cells.append(
                _ratio(row.mb_per_s, other.mb_per_s if other and other.measured else math.nan)
            )
        out.append(cells)
    return _table(header, out)


def _ttfb_table(results: Results) -> list[str]:
    header = [
        "peer",
        "10 KiB: headers, median ms",
        "p90 ms",
        "100 MiB: first body byte, median ms",
        "p90 ms",
        "failures",
    ]
    out: list[list[str]] = []
    for row in results.ttfb.values():
        small = row.small_skipped or _num(median([r.median_ms for r in row.small]), 2)
        small90 = "" if row.small_skipped else _num(median([r.p90_ms for r in row.small]), 2)
        large = row.large_skipped or _num(median([r.median_ms for r in row.large]), 2)
        large90 = "" if row.large_skipped else _num(median([r.p90_ms for r in row.large]), 2)
        failures: dict[str, int] = {}
        for result in row.small + row.large:
            for what, count in result.failures.items():
                failures[what] = failures.get(what, 0) + count
        failed = ", ".join(f"{k}: {v}" for k, v in failures.items()) or "0"
        out.append([row.label, small, small90, large, large90, failed])
    return _table(header, out)


def _rss_table(results: Results) -> list[str]:
    header = [
        "peer",
        "idle RSS MiB",
        "peak RSS (VmHWM) MiB",
        "started / completed",
        "GB read in the window",
        "statuses, errors",
    ]
    out: list[list[str]] = []
    for row in results.rss.values():
        if not row.runs:
            out.append([row.label, f"not measured: {row.skipped or 'no run'}", "", "", "", ""])
            continue
        cap = results.settings.rss_cap_mib
        peak = _num(row.hwm_mib)
        if row.capped:
            peak = f"≥ {cap:,} (stopped at the cap; median {peak})"
        runs = row.runs
        started = median([r.downloads.started for r in runs])
        completed = median([r.downloads.completed for r in runs])
        gigabytes = median([r.downloads.bytes / 1e9 for r in runs])
        statuses: dict[str, int] = {}
        for run in runs:
            for status, count in run.downloads.statuses.items():
                statuses[str(status)] = statuses.get(str(status), 0) + count
            for error, count in run.downloads.errors.items():
                statuses[error] = statuses.get(error, 0) + count
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) or "none"
        out.append(
            [
                row.label,
                _num(row.baseline_mib),
                peak,
                f"{started:.0f} / {completed:.0f}"
                + (" (no answer within the window)" if not started else ""),
                _num(gigabytes, 1),
                shown,
            ]
        )
    return _table(header, out)


def _scaling(results: Results) -> list[str]:
    scaling = results.scaling
    if scaling.status != "measured":
        return [f"listen.workers: {scaling.status}."]
    rows = []
    for row in (scaling.one, scaling.two):
        if row.measured:
            rows.append(
                [
                    row.label,
                    _num(row.rps),
                    _num(row.cpu_us_per_request),
                    _percent(row.busy),
                    str(row.errors),
                ]
            )
        else:
            rows.append([row.label, f"not measured: {row.skipped}", "", "", ""])
    header = ["proxy, 10 KiB stream", "req/s", "CPU µs/req", "server CPU", "errors"]
    lines = _table(header, rows)
    lines += ["", f"Ratio 2 workers / 1 worker: **{_num(scaling.ratio, 2)}x**."]
    return lines


def _load_generator_ceiling(results: Results) -> list[str]:
    """A note when nginx proxy_pass moves as many bytes as nginx itself: then the ceiling is
    the load generator (wrk reading on one core), not the proxies."""
    rows = results.tables.get(LARGE, {})
    direct, nginx = rows.get(DIRECT), rows.get(NGINX)
    if not (direct and nginx and direct.measured and nginx.measured):
        return []
    if nginx.mb_per_s < 0.9 * direct.mb_per_s:
        return []
    return [
        f"Note: nginx proxy_pass ({nginx.mb_per_s:,.0f} MB/s) is within 10% of direct "
        f"({direct.mb_per_s:,.0f} MB/s): the ceiling here is the load generator (one wrk "
        "thread reading on one core, next to the backend), so no proxy can show more than "
        "about 1.0x nginx proxy_pass on this machine.",
        "",
    ]


def _at_least(measured: float, goal: float) -> str:
    if math.isnan(measured):
        return "not measured"
    if measured >= goal:
        return f"**met**, {measured / goal:.2f}x the goal (+{(measured / goal - 1) * 100:.0f}%)"
    return (
        f"**missed**, at {measured / goal * 100:.0f}% of the goal "
        f"(needs {goal / measured:.2f}x more)"
        if measured > 0
        else "**missed**"
    )


def _at_most(measured: float, goal: float) -> str:
    if math.isnan(measured):
        return "not measured"
    if measured <= goal:
        return f"**met**, {(1 - measured / goal) * 100:.0f}% under the limit"
    return f"**missed**, {measured / goal:.2f}x the limit"


def _targets(results: Results) -> list[str]:
    """The goals of issue 26, each a ratio against a peer measured in the same run."""

    def measured(table: str, label: str) -> Row | None:
        row = results.tables.get(table, {}).get(label)
        return row if row and row.measured else None

    def figure(table: str, label: str, value: Callable[[Row], float]) -> float:
        row = measured(table, label)
        return value(row) if row else math.nan

    def div(a: float, b: float) -> float:
        return a / b if b and not math.isnan(b) else math.nan

    def rps(row: Row) -> float:
        return row.rps

    def cpu(row: Row) -> float:
        return row.cpu_us_per_request

    def ttfb(label: str) -> float:
        row = results.ttfb.get(label)
        return median([r.median_ms for r in row.small]) if row and row.small else math.nan

    stream_cpu_us = figure(SMALL_STREAM, PROXY_STREAM, cpu)
    stream_cpu = div(stream_cpu_us, figure(SMALL_STREAM, NAIVE, cpu))
    stream = div(figure(SMALL_STREAM, PROXY_STREAM, rps), figure(SMALL_STREAM, BOTO, rps))
    redirect = div(figure(SMALL_REDIRECT, PROXY_REDIRECT, rps), figure(SMALL_REDIRECT, BARE, rps))
    large = div(
        figure(LARGE, PROXY_STREAM, lambda r: r.mb_per_s),
        figure(LARGE, NGINX, lambda r: r.mb_per_s),
    )
    headers = div(ttfb(PROXY_STREAM), ttfb(NGINX))
    audit = div(figure(SMALL_STREAM, PROXY_AUDIT, cpu), stream_cpu_us) - 1
    rss_row = results.rss.get(PROXY)
    peak = rss_row.hwm_mib if rss_row and rss_row.runs else math.nan
    # Served: answered 2xx and streaming. The test reads for a bounded window (the client,
    # not the server, is its bottleneck), so no 100 MiB download completes within it; the
    # ones not served are those refused or cut (the default connection cap refused 36).
    served = (
        median([_answered(r.downloads.statuses) for r in rss_row.runs])
        if rss_row and rss_row.runs
        else 0
    )
    wanted = results.settings.downloads
    scaling = results.scaling.ratio

    rss_result = "not measured"
    if not math.isnan(peak):
        if rss_row is not None and rss_row.capped:
            rss_result = f"**missed**, stopped at the {results.settings.rss_cap_mib} MiB cap"
        elif served < wanted:
            rss_result = f"**missed**, only {served:.0f} of {wanted} downloads served"
        elif peak < 150:
            rss_result = f"**met**, {150 - peak:.0f} MiB under, all {wanted} served"
        else:
            rss_result = f"**missed**, {peak - 150:.0f} MiB over ({peak / 150:.2f}x the limit)"
    scaling_measured = "n/a" if math.isnan(scaling) else f"{scaling:.2f}x"
    if results.scaling.status != "measured":
        scaling_measured = results.scaling.status
    rows = [
        [
            "stream 10 KiB: server CPU per request vs the naive aiohttp proxy",
            _ratio(stream_cpu, 1.0),
            "≤ 0.9x",
            _at_most(stream_cpu, 0.9),
        ],
        [
            "stream 10 KiB vs aiobotocore proxy (req/s)",
            _ratio(stream, 1.0),
            "≥ 6x",
            _at_least(stream, 6.0),
        ],
        [
            "redirect 10 KiB vs bare 302 (req/s)",
            _ratio(redirect, 1.0),
            "≥ 0.6x",
            _at_least(redirect, 0.6),
        ],
        [
            "stream 100 MiB vs nginx proxy_pass (MB/s)",
            _ratio(large, 1.0),
            "≥ 1.0x",
            _at_least(large, 1.0),
        ],
        [
            "peak RSS, 100 concurrent 100 MiB downloads, all served",
            "n/a" if math.isnan(peak) else f"{peak:.0f} MiB, {served:.0f}/{wanted} served",
            "< 150 MiB",
            rss_result,
        ],
        [
            "stream 10 KiB: median time to headers vs nginx proxy_pass",
            _ratio(headers, 1.0),
            "≤ 1.5x",
            _at_most(headers, 1.5),
        ],
        [
            "stream 10 KiB: CPU per request with the audit trail on, vs off",
            "n/a" if math.isnan(audit) else f"{audit * 100:+.0f}%",
            "≤ +10%",
            _at_most(1 + audit, 1.1),
        ],
        [
            "2 workers vs 1 (10 KiB stream req/s)",
            scaling_measured,
            "≥ 1.8x",
            _at_least(scaling, 1.8) if results.scaling.status == "measured" else "not measured",
        ],
    ]
    return _table(["target", "measured", "goal", "result"], rows)


def _change(current: float, base: float, lower_is_better: bool) -> str:
    if math.isnan(current) or math.isnan(base) or not base:
        return "n/a"
    change = current / base - 1
    better = change < 0 if lower_is_better else change > 0
    verdict = "same" if abs(change) < 0.03 else "better" if better else "worse"
    return f"{change * 100:+.0f}% ({verdict})"


def _baseline_table(results: Results) -> list[str]:
    """Each figure of the proxy beside the same figure of the --baseline commit, same run."""

    def row(table: str, label: str) -> tuple[Row | None, Row | None]:
        rows = results.tables.get(table, {})
        now, then = rows.get(label), rows.get(at_baseline(label))
        return (then if then and then.measured else None), (now if now and now.measured else None)

    def ttfb(label: str) -> tuple[float, float]:
        then, now = results.ttfb.get(at_baseline(label)), results.ttfb.get(label)
        return (
            median([r.median_ms for r in then.small]) if then else math.nan,
            median([r.median_ms for r in now.small]) if now else math.nan,
        )

    def rss() -> tuple[float, float]:
        then, now = results.rss.get(at_baseline(PROXY)), results.rss.get(PROXY)
        return (
            then.hwm_mib if then and then.runs else math.nan,
            now.hwm_mib if now and now.runs else math.nan,
        )

    figures: list[tuple[str, float, float, bool, int]] = []
    for table, label, what in (
        (SMALL_STREAM, PROXY_STREAM, "10 KiB stream"),
        (SMALL_STREAM, PROXY_CACHED, "10 KiB stream with `cache`"),
        (SMALL_REDIRECT, PROXY_REDIRECT, "10 KiB redirect (stable)"),
    ):
        then, now = row(table, label)
        figures.append(
            (
                f"{what}, CPU µs/request",
                then.cpu_us_per_request if then else math.nan,
                now.cpu_us_per_request if now else math.nan,
                True,
                0,
            )
        )
        figures.append(
            (
                f"{what}, req/s",
                then.rps if then else math.nan,
                now.rps if now else math.nan,
                False,
                0,
            )
        )
    then, now = row(LARGE, PROXY_STREAM)
    figures.append(
        (
            "100 MiB stream, CPU ms per 100 MiB",
            then.cpu_ms_per_large_object if then else math.nan,
            now.cpu_ms_per_large_object if now else math.nan,
            True,
            1,
        )
    )
    figures.append(
        (
            "100 MiB stream, MB/s",
            then.mb_per_s if then else math.nan,
            now.mb_per_s if now else math.nan,
            False,
            0,
        )
    )
    figures.append(("10 KiB stream, time to headers, median ms", *ttfb(PROXY_STREAM), True, 2))
    figures.append(("10 KiB redirect, time to headers, median ms", *ttfb(PROXY_REDIRECT), True, 2))
    figures.append(("peak RSS, 100 concurrent 100 MiB downloads, MiB", *rss(), True, 0))
    header = ["figure", f"baseline {results.baseline}", "this checkout", "change"]
    return _table(
        header,
        [
            [name, _num(base, digits), _num(now_value, digits), _change(now_value, base, lower)]
            for name, base, now_value, lower, digits in figures
        ],
    )


def render(results: Results) -> str:
    s = results.settings
    runs = "1 run (--quick)" if s.quick else f"the median of {s.runs} runs"
    lines = [
        "# s3-private-proxy: benchmark against its peers",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `bash benchmarks/run.sh"
        f"{' --quick' if s.quick else ''}` in {results.total_s:.0f} s. Every figure is {runs}.",
        "",
        "## Machine",
        "",
        *_table(["", ""], [[k, v] for k, v in results.facts]),
        "",
        "## Method",
        "",
        f"- **Placement.** Every server under test is pinned to CPU {s.server_cpu} "
        f"(`taskset -c {s.server_cpu}`); the load generator runs on CPU {s.load_cpu} "
        f"(`taskset -c {s.load_cpu} wrk -t1 ...`, and the asyncio clients in the driver process, "
        f"which pins itself to CPU {s.load_cpu}). The backend nginx that the proxies fetch from "
        f"runs on CPU {s.backend_cpu}, sharing it with the load generator. During every run the "
        "harness also adds up the CPU time of every other user-space process (from /proc) and "
        f"the hypervisor's steal time on CPU {s.server_cpu}: more than 5% of a core is listed "
        "under incidents, as such figures may be low.",
        "- **Backend.** nginx (1 worker, sendfile, no access log) serves static files at "
        "`/bench/KEY`, like path-style S3. It **ignores S3 signatures** (and the rest of the S3 "
        "API): the proxies sign their requests as for S3, and nginx answers them as plain GETs. "
        "Real S3 adds latency and its own limits; this setup isolates the proxies' own cost.",
        "- **Peers.** *direct*: wrk straight at a second, identical static nginx (the physical "
        "limit). *nginx proxy_pass*: nginx (1 worker) proxying to the backend with keep-alive "
        "upstream connections and in-memory buffers (`proxy_buffers 8 64k`, no temp files). "
        "*naive aiohttp proxy*: reads the whole body from the backend with aiohttp, then "
        "returns it. *aiobotocore proxy*: aiobotocore `get_object` (path addressing, checksum "
        "validation `when_required`, a 128-connection pool), body relayed in 64 KiB chunks. "
        "*bare 302*: an aiohttp handler answering 302 with a fixed Location (the framework "
        "floor). *s3-private-proxy*: `python -m proxy serve` on a generated config (HS256 JWT "
        "checked on every request, `s3.max_connections: 128`, JSON access log to a file); "
        "`/s/` is a `stream` route, `/r/` a `redirect` route with `stable: 3600`, `ttl: 300`. "
        "Every request carries `Authorization: Bearer <JWT>`, peers included.",
        f"- **Throughput.** `wrk -t1 -c{s.small_connections} -d{s.small_seconds}s` for 10 KiB "
        f"(redirects are not followed), `-c{s.large_connections} -d{s.large_seconds}s` for "
        f"100 MiB; {s.warmup_seconds} s of warm-up per peer and workload first. Runs of "
        "different peers are interleaved. *CPU µs/req*: utime+stime of the server's process "
        "tree (nginx master and worker; reaped children included) from /proc before and after "
        "the wrk run, divided by the requests completed; for 100 MiB, per 100 MiB moved. The "
        "backend's CPU is not counted for the proxies. *server CPU*: that CPU time over the "
        "run's wall time (100% = one core busy); well below 100%, the server was not the "
        "bottleneck (the load generator or the backend was), and its req/s says more about "
        "them than about it. *spread*: ±half the max-min range of "
        "the runs, relative to the median. *errors*: wrk socket errors plus non-2xx/3xx "
        "answers, all runs.",
        f"- **Time to first byte.** A Python asyncio client (aiohttp): {s.ttfb_small_samples} "
        "sequential 10 KiB GETs on one keep-alive connection, time until the response headers; "
        f"{s.ttfb_large_samples} sequential 100 MiB GETs, each on a new connection, time until "
        "the first body byte (then it hangs up).",
        f"- **Memory.** Each of the three Python proxies freshly started, then {s.downloads} "
        f"concurrent 100 MiB downloads read and discarded by one asyncio client, for at most "
        f"{s.downloads_bound_s:.0f} s (the client, on one core, is the bottleneck: the servers "
        f"see back-pressure). Peak RSS is VmHWM from /proc/PID/status; idle RSS is VmRSS before "
        f"the downloads. A server whose RSS passes {s.rss_cap_mib:,} MiB is stopped there.",
        "- **Scaling.** 10 KiB stream with `listen.workers: 1` pinned to CPU "
        f"{s.server_cpu}, then with `listen.workers: 2` not pinned, wrk still on CPU "
        f"{s.load_cpu}. On a 2-core machine the two workers share their cores with wrk and the "
        "backend nginx, so the ratio understates what 2 dedicated cores would give.",
    ]
    if s.proxy_overrides:
        lines.append(f"- **Proxy config overrides:** `{'`, `'.join(s.proxy_overrides)}`.")
    if results.proxy_config:
        lines += [
            "",
            "The proxy's generated config (throughput and TTFB; the scaling runs add "
            "`listen.workers`):",
            "",
            "```yaml",
            results.proxy_config.rstrip(),
            "```",
        ]
    if results.baseline:
        lines += [
            "",
            f"## Against the baseline {results.baseline}",
            "",
            "The same proxy config on the baseline commit (its own tree and venv), its runs "
            "alternated with this checkout's in every phase. CPU per request is the figure to "
            "read; changes under 3% are noise on a shared machine.",
            "",
            *_baseline_table(results),
        ]
    lines += [
        "",
        f"## {SMALL_STREAM}",
        "",
        *_throughput_table(results, SMALL_STREAM, [BOTO, NGINX]),
        "",
        f"## {SMALL_REDIRECT} (302, not followed)",
        "",
        *_throughput_table(results, SMALL_REDIRECT, [BARE]),
        "",
        f"## {LARGE}, throughput",
        "",
        *_large_table(results),
        "",
        *_load_generator_ceiling(results),
        "## Time to first byte",
        "",
        *_ttfb_table(results),
        "",
        "## Peak RSS with 100 concurrent 100 MiB downloads",
        "",
        *_rss_table(results),
        "",
        "## Scaling: listen.workers",
        "",
        *_scaling(results),
        "",
        "## Targets",
        "",
        *_targets(results),
        "",
        "## Errors and incidents",
        "",
        "Clients hang up on purpose in three places: wrk closes its connections with requests "
        "in flight at the end of every run, the 100 MiB time-to-first-byte client hangs up after "
        "the first byte, and the memory test drops its downloads at the end of its window. A "
        "server should count those as client disconnects, not as errors.",
        "",
    ]
    lines += [f"- {incident}" for incident in results.incidents] or ["- none"]
    if results.proxy_log:
        lines += ["", "The proxy's own access log over the whole run:", ""]
        lines += [f"- {line}" for line in results.proxy_log]
    lines += ["", "## Time taken", ""]
    lines += _table(["phase", "seconds"], [[name, f"{secs:.0f}"] for name, secs in results.phases])
    return "\n".join(lines) + "\n"


def _answered(statuses: Mapping[int, int]) -> int:
    """Downloads answered with a 2xx status (the memory test's `served`)."""
    return sum(count for status, count in statuses.items() if 200 <= status < 300)
