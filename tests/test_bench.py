"""`python -m proxy bench` end to end, on small objects: the report says what it should."""

from __future__ import annotations

import json
from pathlib import Path

from proxy.bench import run_bench


def test_bench_compares_the_methods_and_writes_its_report(tmp_path: Path, capsys) -> None:
    assert run_bench(tmp_path, rounds=1, sizes=(10 * 1024, 100 * 1024)) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| bytes sent through the proxy |" in report
    assert (tmp_path / "comparison.png").read_bytes().startswith(b"\x89PNG")
    results = json.loads((tmp_path / "results.json").read_text())
    stream_first, stream_second = results["stream"]
    redirect_first, redirect_second = results["redirect"]
    assert stream_first["proxy_bytes"] == 110 * 1024  # every byte through the proxy
    assert redirect_first["proxy_bytes"] == 0  # none: clients fetched from S3
    assert redirect_first["s3_requests"] == 2  # by the client, following the redirects
    # A second view: redirects and images come from the cache; streams are revalidated.
    assert (redirect_second["proxy_requests"], redirect_second["s3_requests"]) == (0, 0)
    assert stream_second["proxy_requests"] == 2 and stream_second["proxy_bytes"] == 0
    assert "report:" in capsys.readouterr().out
