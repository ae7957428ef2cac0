"""The benchmark report's arithmetic: the baseline comparison and the targets, from made-up runs
(no servers: the figures are given, so the verdicts can be checked exactly)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import baseline, model, report  # noqa: E402
from harness.load import DownloadsResult, TtfbResult, WrkResult  # noqa: E402


def _settings() -> model.Settings:
    return model.Settings(
        quick=True,
        runs=1,
        small_seconds=2,
        large_seconds=2,
        warmup_seconds=1,
        small_connections=64,
        large_connections=4,
        ttfb_small_samples=50,
        ttfb_large_samples=5,
        downloads=100,
        downloads_bound_s=5.0,
        rss_cap_mib=4096,
        server_cpu="0",
        load_cpu="1",
        backend_cpu="1",
        proxy_overrides=[],
    )


def _row(results: model.Results, table: str, label: str, requests: int, cpu_s: float) -> None:
    wrk = WrkResult(requests, 1.0, requests * 10240, {}, 0, 1.0, 2.0)
    results.row(table, label).samples.append(model.Sample(wrk, cpu_s, 0.0, 0.0))


def _ttfb(results: model.Results, label: str, ms: float) -> None:
    results.ttfb[label] = model.TtfbRow(label, small=[TtfbResult(ms, ms, 50, {})])


def _results() -> model.Results:
    results = model.Results(settings=_settings(), baseline="abc1234567")
    stream, redirect = model.SMALL_STREAM, model.SMALL_REDIRECT
    _row(results, stream, model.NAIVE, 1000, 1.0)  # 1000 µs per request
    _row(results, stream, model.BOTO, 500, 1.0)
    _row(results, stream, model.at_baseline(model.PROXY_STREAM), 2000, 1.0)  # 500 µs
    _row(results, stream, model.PROXY_STREAM, 4000, 1.6)  # 400 µs: 20% better, 0.4x naive
    _row(results, stream, model.PROXY_AUDIT, 4000, 1.68)  # 420 µs: +5% over PROXY_STREAM
    _row(results, redirect, model.BARE, 10000, 1.0)
    _row(results, redirect, model.PROXY_REDIRECT, 5000, 1.0)  # 0.5x bare: under 0.6x
    _ttfb(results, model.NGINX, 1.0)
    _ttfb(results, model.PROXY_STREAM, 1.2)
    # The default connection cap: 64 answered 200, 36 refused (none completes in the window).
    refused = DownloadsResult(started=64, completed=0, statuses=Counter({200: 64}))
    refused.errors["ClientOSError"] = 36
    run = model.RssRun(50_000, 100 * 1024, refused)
    results.rss[model.PROXY] = model.RssRow(model.PROXY, runs=[run])
    return results


def test_baseline_table_gives_each_change_with_its_direction() -> None:
    text = "\n".join(report._baseline_table(_results()))
    assert "| 10 KiB stream, CPU µs/request | 500 | 400 | -20% (better) |" in text
    assert "| 10 KiB stream, req/s | 2,000 | 4,000 | +100% (better) |" in text
    assert "baseline abc1234567" in text


def test_targets_are_ratios_against_peers_of_the_same_run() -> None:
    text = "\n".join(report._targets(_results()))
    assert "| stream 10 KiB: server CPU per request vs the naive aiohttp proxy | 0.40x |" in text
    assert "**met**, 56% under the limit" in text
    assert "| stream 10 KiB vs aiobotocore proxy (req/s) | 8.00x | ≥ 6x | **met**" in text
    assert "| redirect 10 KiB vs bare 302 (req/s) | 0.50x | ≥ 0.6x | **missed**" in text
    assert "| stream 10 KiB: median time to headers vs nginx proxy_pass | 1.20x |" in text
    assert "+5% | ≤ +10% | **met**" in text
    # 64 of 100 downloads served is a miss whatever the RSS (the default connection cap).
    assert "**missed**, only 64 of 100 downloads served" in text


def test_downloads_streaming_when_the_window_ends_count_as_served() -> None:
    """The memory test reads for a bounded window: 100 downloads answered 200 and cut by
    the client at its end are all served, though none completed."""
    results = _results()
    streaming = DownloadsResult(started=100, completed=0, statuses=Counter({200: 100}))
    results.rss[model.PROXY] = model.RssRow(
        model.PROXY, runs=[model.RssRun(50_000, 100 * 1024, streaming)]
    )
    text = "\n".join(report._targets(results))
    assert "100 MiB, 100/100 served | < 150 MiB | **met**, 50 MiB under, all 100 served" in text


def test_render_opens_with_the_baseline_section() -> None:
    results = _results()
    results.facts = [("cpu", "test")]
    text = report.render(results)
    assert text.index("## Against the baseline abc1234567") < text.index("## 10 KiB GET")


def test_a_ref_that_is_not_a_commit_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(baseline.BaselineError, match="no-such-ref"):
        baseline.resolve(ROOT, "no-such-ref")


def test_run_sh_lists_the_baseline_option() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT / "benchmarks",
    )
    assert "--baseline REF" in done.stdout
