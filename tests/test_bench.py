"""`python -m proxy bench` end to end, on small objects: the report says what it should."""

from __future__ import annotations

import json
from pathlib import Path

from proxy.bench import UploadRun, View, chart, draw_charts, report, run_bench, upload_report


def test_bench_compares_the_methods_and_writes_its_report(tmp_path: Path, capsys) -> None:
    assert run_bench(tmp_path, rounds=1, sizes=(10 * 1024, 100 * 1024), upload_sizes=(4096,)) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| bytes sent through the proxy |" in report
    # The charts, beside the report and linked from it.
    assert "](comparison.png)" in report
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
    # cloudfront, through the stand-in edge: a 302 each, the bytes from the edge, whose cache
    # the unmeasured check filled (no S3 request); then the cached 302s and a 304 from the edge.
    cloudfront_first, cloudfront_second = results["cloudfront"]
    assert (cloudfront_first["proxy_requests"], cloudfront_first["proxy_bytes"]) == (2, 0)
    assert (cloudfront_first["edge_requests"], cloudfront_first["edge_bytes"]) == (2, 110 * 1024)
    assert cloudfront_first["s3_requests"] == 0
    assert (cloudfront_second["proxy_requests"], cloudfront_second["edge_bytes"]) == (0, 0)
    assert "| | stream | redirect | cloudfront |" in report
    assert "report:" in capsys.readouterr().out
    engines = json.loads((tmp_path / "engines.json").read_text())
    assert set(engines) == {"builtin", "aiobotocore"}
    for views in engines.values():  # both engines streamed every byte, one S3 GET per object
        assert (views["stream"][0]["proxy_bytes"], views["stream"][0]["s3_requests"]) == (
            110 * 1024,
            2,
        )
    assert "| | builtin | aiobotocore |" in report
    assert "| proxy CPU per request |" in report
    # Uploads: the same bytes through the proxy, and past it by a 307 to a presigned PUT.
    assert "## Uploads" in report
    stream_upload, redirect_upload, multipart_upload = json.loads(
        (tmp_path / "uploads.json").read_text()
    )
    assert (stream_upload["method"], stream_upload["size"]) == ("stream", 4096)
    assert stream_upload["proxy_bytes"] == 4096  # the body went through the proxy
    assert stream_upload["s3_requests"] == 2  # the proxy's HEAD (create or replace?), PutObject
    assert (redirect_upload["method"], redirect_upload["proxy_bytes"]) == ("redirect", 0)
    assert redirect_upload["s3_requests"] == 1  # the client's PUT to the presigned URL
    assert "| 4 KiB | stream |" in report and "| 4 KiB | redirect |" in report
    # And in parts to presigned part URLs: only the sign API's JSON crossed the proxy.
    assert multipart_upload["method"] == "multipart"
    assert 0 < multipart_upload["proxy_bytes"] < 4096
    # One part PUT by the client; CreateMultipartUpload, then ListMultipartUploads (the key
    # check), ListParts and CompleteMultipartUpload by the proxy.
    assert multipart_upload["s3_requests"] == 5
    assert "| 4 KiB | multipart |" in report


def test_upload_report_rows_per_size_and_method() -> None:
    runs = [
        UploadRun(8 * 2**20, "stream", [0.1, 0.3], 16 * 2**20, 2, 0.09),
        UploadRun(8 * 2**20, "redirect", [0.05, 0.07], 0, 2, 0.0),
        UploadRun(8 * 2**20, "multipart", [0.07, 0.09], 6000, 6, 0.02),
    ]
    text = upload_report(runs, rounds=2, tick=0.01)
    below = "(below what this run can measure; use more --rounds or larger objects)"
    assert "| 8 MiB | stream | 200.0 ms | 8.0 MiB | 1 | 45.0 ms | 1024.0 MiB | 5.76 s |" in text
    assert f"| 8 MiB | redirect | 60.0 ms | 0 B | 1 | < 0.005 s {below} | 0 B | < 0.64 s |" in text
    assert "| 8 MiB | multipart | 80.0 ms | 2.93 KiB | 3 | 10.0 ms | 375 KiB | 1.28 s |" in text


def _view(proxy_cpu: float, proxy_bytes: int, client_bytes: int) -> View:
    view = View(ttfb=[0.002], total=[0.003], proxy_requests=2, s3_requests=2)
    view.proxy_cpu, view.proxy_bytes, view.client_bytes = proxy_cpu, proxy_bytes, client_bytes
    return view


def _rows(text: str) -> dict[str, tuple[str, str]]:
    cells = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return {name.strip(): (stream.strip(), redirect.strip()) for name, stream, redirect in cells}


def test_report_says_when_cpu_and_bytes_are_below_what_it_measures() -> None:
    """Small objects: the proxy's CPU is below one /proc clock tick, and the bytes are far
    below one MiB. The report must not print "0.000 s" or "0.0 MiB" as if they were zero."""
    size = 110 * 1024
    results = {
        "stream": [_view(0.0, size, size), _view(0.0, 0, size)],
        "redirect": [_view(0.0, 0, size), _view(0.0, 0, size)],
    }
    rows = _rows(report(results, [("/objects/a.bin", size)], rounds=1, notes=[], tick=0.01))
    below = "(below what this run can measure; use more --rounds or larger objects)"
    assert rows["proxy CPU"] == (f"< 0.01 s {below}",) * 2
    # An upper bound per GB: one tick over the 112,640 bytes delivered.
    assert rows["proxy CPU per GB delivered"] == (f"< 89 s {below}",) * 2
    assert rows["bytes sent through the proxy"] == ("110 KiB", "0 B")
    assert rows["second view: bytes sent through the proxy"] == ("0 B", "0 B")


def test_report_prints_measurable_amounts_as_measured() -> None:
    size = 64 * 2**20
    results = {
        "stream": [_view(0.25, size, size), _view(0.0, 0, size)],
        "redirect": [_view(0.02, 0, size), _view(0.0, 0, size)],
    }
    rows = _rows(report(results, [("/objects/a.bin", size)], rounds=1, notes=[], tick=0.01))
    assert rows["proxy CPU"] == ("0.25 s", "0.02 s")
    assert rows["proxy CPU per GB delivered"] == ("3.73 s", "0.30 s")
    assert rows["bytes sent through the proxy"] == ("64.0 MiB", "0 B")


def test_report_links_its_charts_or_says_how_to_get_them() -> None:
    size = 10 * 1024
    results = {
        "stream": [_view(0.0, size, size), _view(0.0, 0, size)],
        "redirect": [_view(0.0, 0, size), _view(0.0, 0, size)],
    }
    objects = [("/objects/a.bin", size)]
    linked = report(results, objects, rounds=1, notes=[], tick=0.01, chart="comparison.png")
    assert (
        "![time to first byte, bytes through the proxy, requests per view](comparison.png)"
        in linked
    )
    unlinked = report(results, objects, rounds=1, notes=[], tick=0.01)
    assert "](" not in unlinked and "pip install -e '.[bench]'" in unlinked


def test_charts_draw_the_three_comparisons(tmp_path: Path) -> None:
    """What the PNG shows: per chart, a bar per method with the numbers the report has."""
    size = 100 * 1024
    results = {
        "stream": [_view(0.0, 2 * size, 2 * size), _view(0.0, 0, 2 * size)],
        "redirect": [_view(0.0, 0, 2 * size), _view(0.0, 0, 2 * size)],
    }
    for method in results:  # one round of two objects
        results[method][0].ttfb = [0.002, 0.004]
    results["redirect"][1].proxy_requests = results["redirect"][1].s3_requests = 0
    objects = [("/objects/a.bin", size), ("/objects/b.bin", size)]
    figure = draw_charts(results, objects)
    ttfb, sent, requests = figure.axes
    assert [axes.get_title() for axes in figure.axes] == [
        "time to first byte at the client",
        "bytes through the proxy",
        "requests (S3's include the proxy's and the edge's)",
    ]
    assert [text.get_text() for text in ttfb.texts] == ["2.0", "4.0", "2.0", "4.0"]
    assert [text.get_text() for text in sent.texts] == ["200 KiB", "0 B"]
    # Per method, a first and a second view: requests to the proxy plus requests to S3.
    assert [text.get_text() for text in requests.texts] == ["4", "4", "4", "0"]
    path = chart(results, objects, tmp_path)
    assert path == tmp_path / "comparison.png" and path.read_bytes().startswith(b"\x89PNG")


def test_a_third_method_gets_its_column_and_its_bars() -> None:
    """With a cloudfront section: a column of its own, requests to the edge apart from S3's,
    and S3 requests a real CloudFront made said to be unseen."""
    size = 100 * 1024
    results = {
        "stream": [_view(0.0, size, size), _view(0.0, 0, size)],
        "redirect": [_view(0.0, 0, size), _view(0.0, 0, size)],
        "cloudfront": [_view(0.0, 0, size), _view(0.0, 0, size)],
    }
    results["cloudfront"][0].edge_requests = 1
    results["cloudfront"][0].s3_requests = 0
    results["cloudfront"][0].s3_unseen = True
    text = report(results, [("/objects/a.bin", size)], rounds=1, notes=[], tick=0.01)
    assert text.startswith("# stream vs redirect vs cloudfront")
    assert "| | stream | redirect | cloudfront |" in text
    assert "| requests that reached the edge | 0 | 0 | 1 |" in text
    assert (
        "| S3 requests (by the proxy, the client or the edge) | 2 | 2 | "
        "0 + CloudFront's (not seen from here) |" in text
    )
    figure = draw_charts(results, [("/objects/a.bin", size)])
    _, sent, requests = figure.axes
    assert [text.get_text() for text in sent.texts] == ["100 KiB", "0 B", "0 B"]
    assert [label.get_text() for label in requests.get_legend().get_texts()][-1] == (
        "cloudfront: to the edge"
    )
