"""`python -m proxy demo` as a newcomer meets it: the process, its page, and Chromium.

The browser test drives Debian's Chromium (/usr/bin/chromium, installed by scripts/test.sh)
with Playwright; it never downloads a browser. It is skipped, with the reason, only where
Chromium is not installed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.demo.images import portrait_png

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_generated_photos_are_valid_pngs_of_the_asked_size() -> None:
    data = portrait_png(40, 3)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (40, 40)
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4 : idat], "big")
    assert len(zlib.decompress(data[idat + 4 : idat + 4 + length])) == 40 * (1 + 40 * 3)
    assert len(portrait_png(200, 3)) > len(data)


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=env,
    )
    drains: list[threading.Thread] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        base = None
        output = []
        while base is None:
            line = process.stdout.readline()
            output.append(line)
            assert line or process.poll() is None, "".join(output)
            assert time.monotonic() < deadline, "demo did not start"
            found = re.search(r"proxy at (http://127\.0\.0\.1:\d+)", line)
            if found:
                base = found.group(1)
        # keep draining its output so the pipe never fills
        drain = threading.Thread(target=process.stdout.read, daemon=True)
        drain.start()
        drains.append(drain)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)
        for thread in drains:
            thread.join(timeout=10)  # reaches EOF now that the process has exited
        if process.stdout is not None:
            process.stdout.close()


def _json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_demo_serves_its_page_and_numbers(demo: str) -> None:
    with urllib.request.urlopen(demo + "/", timeout=10) as response:
        assert "stream" in response.read().decode()
    stats = _json(demo + "/_demo/stats")
    assert set(stats) == {"proxy", "s3", "edge", "settled"}
    assert _json(demo + "/_demo/stats?settled")["settled"] is True  # nothing in progress
    info = _json(demo + "/_demo/info")
    assert info["photos"] == 6 and info["share_link"].startswith("/admin/reports/")
    assert info["edge"].startswith("http://127.0.0.1:")
    with urllib.request.urlopen(demo + info["share_link"], timeout=10) as shared:
        assert shared.read().startswith(b"quarter,revenue")
    # The pages take GET only: a form posted at the sign-in page changes nothing.
    post = urllib.request.Request(demo + "/_demo/login?as=admin", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=10)
    assert refused.value.code == 405
    assert "Set-Cookie" not in refused.value.headers
    refused.value.close()  # its socket, now, not whenever the garbage collector finds it


def _demo_token(demo: str, role: str) -> str:
    """The token the demo's sign-in page sets as a cookie for `role`."""

    class Keep(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None  # the 302 itself carries the cookie

    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.build_opener(Keep).open(f"{demo}/_demo/login?as={role}", timeout=10)
    cookies = answer.value.headers.get_all("Set-Cookie")
    answer.value.close()
    return next(c.split(";")[0].split("=", 1)[1] for c in cookies if c.startswith("access_token="))


def _put(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """PUT `body`; the status and headers, without following a redirect."""

    class Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    request = urllib.request.Request(url, data=body, headers=headers, method="PUT")
    try:
        with urllib.request.build_opener(Stay).open(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as refused:
        refused.close()
        return refused.code, dict(refused.headers)


def test_employees_upload_pictures_to_their_own_folder_both_ways(demo: str) -> None:
    picture = portrait_png(48, 2)
    png = {"Content-Type": "image/png"}
    # Anonymous: refused before any byte goes to S3.
    for path in ("/stream/uploads/me.png", "/uploads/me.png"):
        assert _put(demo + path, picture, png)[0] == 401
    employee = {**png, "Authorization": "Bearer " + _demo_token(demo, "employee")}
    # Stream: through the proxy, 201.
    status, headers = _put(demo + "/stream/uploads/me.png", picture, employee)
    assert (status, headers["Location"]) == (201, "/stream/uploads/me.png")
    # Redirect: 307 to a presigned PUT, which the client repeats with the same type.
    status, headers = _put(demo + "/uploads/me-too.png", picture, employee)
    assert status == 307
    assert _put(headers["Location"], picture, png)[0] == 200
    # Each reads back by either route, from the employee's folder; not from the admin's.
    read = {"Authorization": employee["Authorization"]}
    for path in ("/stream/uploads/me.png", "/stream/uploads/me-too.png"):
        request = urllib.request.Request(demo + path, headers=read)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.read() == picture
    admin = {"Authorization": "Bearer " + _demo_token(demo, "admin")}
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(
            urllib.request.Request(demo + "/stream/uploads/me.png", headers=admin), timeout=10
        )
    assert missing.value.code == 404
    missing.value.close()


def _chromium_or_skip() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"{CHROMIUM} is not installed (scripts/test.sh installs Debian's chromium "
            "with apt-get when it runs as root)"
        )
    playwright = pytest.importorskip("playwright.sync_api")
    return playwright


def test_both_methods_in_a_real_browser(demo: str, tmp_path: Path) -> None:
    sync_api = _chromium_or_skip()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                accept_downloads=True, viewport={"width": 1100, "height": 1300}
            )
            page = context.new_page()

            # An employee sees the three galleries render; the cloudfront one from the
            # stand-in edge, with the cookies one POST /_sign set.
            page.goto(demo + "/_demo/login?as=employee", wait_until="networkidle")
            widths = _image_widths(page)
            assert [len(widths[kind]) for kind in KINDS] == [6, 6, 6]
            assert all(w > 0 for kind in KINDS for w in widths[kind]), widths
            first = _json(demo + "/_demo/stats")
            edge = _json(demo + "/_demo/info")["edge"]
            sources = page.evaluate(
                "[...document.querySelectorAll('#col-cloudfront img')].map(i => i.src)"
            )
            assert all(source.startswith(edge + "/employees/") for source in sources), sources

            # A second view: redirect images come from the browser cache without any request
            # (not to the proxy, not to S3); stream images are revalidated with the proxy.
            page.goto(demo + "/", wait_until="networkidle")
            widths = _image_widths(page)
            assert all(w > 0 for kind in KINDS for w in widths[kind]), widths
            second = _json(demo + "/_demo/stats")
            # cloudfront: one POST /_sign, and the images from the browser cache (the objects'
            # max-age), so the edge saw nothing either.
            assert second["edge"]["requests"] == first["edge"]["requests"]
            signs = [stats["proxy"]["by_delivery"]["sign"]["requests"] for stats in (first, second)]
            assert signs[1] == signs[0] + 1
            redirect_1 = first["proxy"]["by_delivery"]["redirect"]
            redirect_2 = second["proxy"]["by_delivery"]["redirect"]
            assert redirect_2["requests"] == redirect_1["requests"]
            assert second["s3"]["presigned_requests"] == first["s3"]["presigned_requests"]
            stream_1 = first["proxy"]["by_delivery"]["stream"]
            stream_2 = second["proxy"]["by_delivery"]["stream"]
            revalidated = stream_2["not_modified"] - stream_1["not_modified"]
            from_cache = 6 - (stream_2["requests"] - stream_1["requests"])
            assert revalidated + from_cache == 6
            assert stream_2["bytes_sent"] == stream_1["bytes_sent"]  # no image sent again
            page.screenshot(path=str(tmp_path / "demo-employee.png"), full_page=True)

            # The admin-only report: 403 for the employee...
            status = page.evaluate("fetch('/admin/reports/q4-report.csv').then(r => r.status)")
            assert status == 403
            # ...and a download for the admin.
            page.goto(demo + "/_demo/login?as=admin", wait_until="networkidle")
            with page.expect_download() as download_info:
                page.click("#admin-report")
            download = download_info.value
            assert download.suggested_filename == "q4-report.csv"
            saved = tmp_path / "q4-report.csv"
            download.save_as(saved)
            assert saved.read_text().startswith("quarter,revenue")
            page.screenshot(path=str(tmp_path / "demo-admin.png"), full_page=True)
            print(f"\nscreenshots: {tmp_path / 'demo-employee.png'}, {tmp_path / 'demo-admin.png'}")
        finally:
            browser.close()


def test_upload_a_picture_both_ways_in_a_real_browser(demo: str, tmp_path: Path) -> None:
    """The page's upload: by stream (201 from the proxy) and by redirect (the browser follows
    the 307 to S3 itself), each picture then shown from the route it went up by."""
    sync_api = _chromium_or_skip()
    picture = tmp_path / "cat.png"
    picture.write_bytes(portrait_png(64, 4))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1100, "height": 1500}).new_page()
            page.goto(demo + "/_demo/login?as=employee", wait_until="networkidle")
            page.set_input_files("#upload-file", str(picture))
            for method, status, said in (
                ("stream", "201", "stream: 201 from the proxy"),
                ("redirect", "200", "redirect: 200 from S3, after a 307 from the proxy"),
            ):
                page.click(f"#upload-{method}")
                page.wait_for_selector(f"#upload-shown img[data-method={method}]")
                assert page.get_attribute("#upload-result", "data-status") == status
                assert page.inner_text("#upload-result").startswith(said)
                page.wait_for_function(
                    f"(() => {{ const i = document.querySelector("
                    f"'#upload-shown img[data-method={method}]'); return i.complete; }})()"
                )
                width = page.evaluate(
                    f"document.querySelector('#upload-shown img[data-method={method}]')"
                    ".naturalWidth"
                )
                assert width == 64
            page.screenshot(path=str(tmp_path / "upload-employee.png"), full_page=True)

            # Anonymous: the proxy refuses the upload.
            page = browser.new_context().new_page()
            page.goto(demo + "/_demo/login?as=anonymous", wait_until="networkidle")
            page.set_input_files("#upload-file", str(picture))
            page.click("#upload-redirect")
            page.wait_for_selector("#upload-result[data-status]")
            assert page.get_attribute("#upload-result", "data-status") == "401"
            assert page.inner_text("#upload-result").startswith("redirect: 401 sign in first")
        finally:
            browser.close()


KINDS = ("stream", "redirect", "cloudfront")


def _image_widths(page: Any) -> dict[str, list[int]]:
    page.wait_for_function(
        "[...document.images].length === 18 && [...document.images].every(i => i.complete)"
    )
    widths: dict[str, list[int]] = page.evaluate(
        """(kinds) => Object.fromEntries(kinds.map(kind => [kind,
            [...document.querySelectorAll('#col-' + kind + ' img')].map(i => i.naturalWidth)]))""",
        list(KINDS),
    )
    return widths


def test_the_panel_counts_each_view_where_it_happened(demo: str, tmp_path: Path) -> None:
    """From a fresh profile: the panel's per-view numbers are what the proxy and S3 saw,
    its charts draw them, and a refused image says why under it."""
    sync_api = _chromium_or_skip()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 1500})
            page = context.new_page()

            # A first view: every image crosses the network. The redirect images are six S3
            # requests by the browser, not "from the browser cache".
            page.goto(demo + "/_demo/login?as=employee")
            view = _counted_view(page)
            assert _column(view["stream"]) == {
                "loaded": 6,
                "proxyRequests": 6,
                "proxyNotModified": 0,
                "browserS3Requests": 0,
                "fromCache": 0,
            }
            assert view["stream"]["proxyBytes"] == view["stream"]["proxyS3Bytes"] > 0
            assert _column(view["redirect"]) == {
                "loaded": 6,
                "proxyRequests": 6,
                "proxyNotModified": 0,
                "browserS3Requests": 6,
                "fromCache": 0,
            }
            assert view["redirect"]["proxyBytes"] == view["redirect"]["proxyS3Requests"] == 0
            # cloudfront: one POST /_sign for the gallery, six images from the edge, which
            # asks S3 at most once per photo (another browser may have filled its cache).
            assert _column(view["cloudfront"]) == {
                "loaded": 6,
                "proxyRequests": 1,
                "proxyNotModified": 0,
                "browserS3Requests": 0,
                "fromCache": 0,
            }
            assert view["cloudfront"]["browserEdgeRequests"] == 6
            assert view["cloudfront"]["proxyBytes"] < 4096  # the sign API's JSON, no image
            assert view["cloudfront"]["proxyS3Requests"] <= 6
            cells = _cells(page)
            assert cells["stream"]["proxy-requests"] == "6"
            assert cells["redirect"]["browser-s3"] == "6"
            assert cells["redirect"]["from-cache"] == "0"
            assert cells["redirect"]["proxy-bytes"] == "0 B"
            assert cells["cloudfront"]["proxy-requests"] == "1"
            assert cells["cloudfront"]["browser-edge"] == "6"
            assert _bars(page) == {chart: [["this view (employee)"]] * 3 for chart in CHARTS}
            page.screenshot(path=str(tmp_path / "panel-employee-first.png"), full_page=True)

            # The second view: the stable 302 and S3's image are both cached (max-age=3600),
            # so redirect images need no request at all; stream images are revalidated (304).
            with page.expect_navigation():
                page.click("#reload")
            view = _counted_view(page)
            assert _column(view["redirect"]) == {
                "loaded": 6,
                "proxyRequests": 0,
                "proxyNotModified": 0,
                "browserS3Requests": 0,
                "fromCache": 6,
            }
            assert _column(view["stream"]) == {
                "loaded": 6,
                "proxyRequests": 6,
                "proxyNotModified": 6,
                "browserS3Requests": 0,
                "fromCache": 6,
            }
            assert _column(view["cloudfront"]) == {
                "loaded": 6,
                "proxyRequests": 1,  # the gallery's POST /_sign
                "proxyNotModified": 0,
                "browserS3Requests": 0,
                "fromCache": 6,
            }
            assert view["cloudfront"]["browserEdgeRequests"] == 0
            assert view["stream"]["proxyBytes"] == view["redirect"]["proxyBytes"] == 0
            assert view["redirect"]["ttfb"] is None  # nothing reached the proxy
            cells = _cells(page)
            assert cells["redirect"]["from-cache"] == "6"
            assert cells["redirect"]["ttfb"] == "no request"
            bars = _bars(page)
            groups = ["previous view (employee)", "this view (employee)"]
            assert bars == {chart: [groups, groups, groups] for chart in CHARTS}
            values = page.evaluate(
                """() => [...document.querySelectorAll('#chart-requests rect.bar')]
                    .map(r => [r.dataset.kind, r.dataset.value])"""
            )
            assert values == [
                ["stream", "6"],
                ["redirect", "12"],  # first view: six 302s and six S3 requests
                ["cloudfront", "7"],  # first view: one POST /_sign, six images from the edge
                ["stream", "6"],
                ["redirect", "0"],
                ["cloudfront", "1"],
            ]
            page.screenshot(path=str(tmp_path / "panel-employee-second.png"), full_page=True)

            # Signed out in the same browser: stream images are refused (401; their copies
            # must be revalidated), but the redirects and S3's images are still fresh in the
            # browser cache, and it shows them without asking anyone. Vary: Cookie does not
            # stop that; only their max-age ends it.
            page.goto(demo + "/_demo/login?as=anonymous")
            view = _counted_view(page)
            assert (view["stream"]["failed"], view["stream"]["proxyRequests"]) == (6, 6)
            assert _column(view["redirect"]) == {
                "loaded": 6,
                "proxyRequests": 0,
                "proxyNotModified": 0,
                "browserS3Requests": 0,
                "fromCache": 6,
            }
            # cloudfront: the sign API names no URL without a token, so the page asks the
            # proxy path, which refuses.
            assert (view["cloudfront"]["failed"], view["cloudfront"]["browserEdgeRequests"]) == (
                6,
                0,
            )
            captions = page.locator(".grid figcaption").all_text_contents()
            assert (
                captions
                == ["401: sign in (no token)"] * 6 + [""] * 6 + ["401: sign in (no token)"] * 6
            )
            assert "still shows 6 redirect images" in page.inner_text("#view-state")
            page.screenshot(path=str(tmp_path / "panel-signed-out.png"), full_page=True)

            # Anonymous in a fresh profile: twelve 401s, each saying so under its image.
            page = browser.new_context(viewport={"width": 1100, "height": 1500}).new_page()
            page.goto(demo + "/")
            view = _counted_view(page)
            for kind in KINDS:
                assert (view[kind]["loaded"], view[kind]["failed"]) == (0, 6)
            assert view["stream"]["proxyRequests"] == view["redirect"]["proxyRequests"] == 6
            assert view["cloudfront"]["proxyRequests"] == 7  # the POST /_sign, then six 401s
            assert view["redirect"]["browserS3Requests"] == 0
            captions = page.locator(".grid figcaption").all_text_contents()
            assert captions == ["401: sign in (no token)"] * 18
            page.screenshot(path=str(tmp_path / "panel-anonymous.png"), full_page=True)
            print(f"\nscreenshots in {tmp_path}")
        finally:
            browser.close()


CHARTS = ("chart-bytes", "chart-requests", "chart-ttfb")


def _counted_view(page: Any) -> dict[str, Any]:
    page.wait_for_selector("#view-panel[data-state=counted]")
    view: dict[str, Any] = page.evaluate("window.demoView")
    assert all(view[kind]["settled"] for kind in KINDS), view
    return view


def _column(numbers: dict[str, Any]) -> dict[str, Any]:
    names = ("loaded", "proxyRequests", "proxyNotModified", "browserS3Requests", "fromCache")
    return {name: numbers[name] for name in names}


def _cells(page: Any) -> dict[str, dict[str, str]]:
    """The panel's per-view table as shown: kind -> row id -> text."""
    cells: dict[str, dict[str, str]] = page.evaluate(
        """() => {
            const out = {stream: {}, redirect: {}, cloudfront: {}};
            for (const cell of document.querySelectorAll('#view-numbers td')) {
                const [, kind, row] = cell.id.match(/^view-(stream|redirect|cloudfront)-(.+)$/);
                out[kind][row] = cell.textContent;
            }
            return out;
        }"""
    )
    return cells


def _bars(page: Any) -> dict[str, list[list[str]]]:
    """Per chart: the group labels under its bars of each kind, in KINDS order."""
    bars: dict[str, list[list[str]]] = page.evaluate(
        """([charts, kinds]) => Object.fromEntries(charts.map(id => {
            const svg = document.querySelector('#' + id + ' svg');
            const groups = [...svg.querySelectorAll('text.group')].map(t => t.textContent);
            const drawn = [...svg.querySelectorAll('rect.bar')].map(r => r.dataset.kind);
            return [id, kinds.map((kind, k) =>
                groups.filter((_, i) => drawn[kinds.length * i + k] === kind))];
        }))""",
        [list(CHARTS), list(KINDS)],
    )
    return bars


def _generated(offset: int, length: int) -> bytes:
    """Bytes of the demo's generated file (multipart.js's partBytes), from `offset` (a whole
    number of words)."""
    words = bytearray()
    first = offset // 4
    for w in range(first, first + -(-length // 4)):
        x = (w * 2654435761) & 0xFFFFFFFF
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & 0xFFFFFFFF
        x ^= x >> 13
        words += x.to_bytes(4, "little")
    return bytes(words[:length])


def test_a_huge_file_in_parts_survives_a_reload_in_a_real_browser(
    demo: str, tmp_path: Path
) -> None:
    """The multipart panel: parts straight to S3, a reload mid-upload, and the upload resumed
    from the parts S3 holds (S3 is held back after two parts, so the reload lands mid-way)."""
    sync_api = _chromium_or_skip()
    size = 33554432  # 32 MiB: seven parts of 5 MiB
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1100, "height": 1500}).new_page()
            held: list[Any] = []
            reloaded = False

            def hold_after_two(route: Any) -> None:
                first_two = (
                    "partNumber=1&" in route.request.url or "partNumber=2&" in route.request.url
                )
                if reloaded or first_two:
                    route.continue_()
                else:
                    held.append(route)  # never sent to S3: the connection "drops" first

            page.route("**/*partNumber=*", hold_after_two)
            page.goto(demo + "/_demo/login?as=employee", wait_until="networkidle")
            page.select_option("#multipart-size", str(size))
            page.click("#multipart-start")
            page.wait_for_function(
                "Number(document.getElementById('multipart-status').dataset.parts || 0) >= 2"
            )
            assert page.get_attribute("#multipart-status", "data-state") == "uploading"
            for route in held:
                route.abort()
            reloaded = True
            page.reload()
            page.wait_for_selector("#multipart-status[data-state=done]", timeout=60_000)
            assert page.get_attribute("#multipart-status", "data-resumed-parts") == "2"
            said = page.inner_text("#multipart-status")
            assert said.startswith("resumed after a reload (S3 held 2 part(s)); done: 32.0 MiB")
            # After the reload the page sent only the five missing parts, and the proxy saw
            # only JSON: a few KB against 22 MiB to S3.
            s3_bytes = int(page.get_attribute("#multipart-status", "data-s3-bytes") or 0)
            proxy_bytes = int(page.get_attribute("#multipart-status", "data-proxy-bytes") or 0)
            assert s3_bytes == size - 2 * 5 * 1024 * 1024
            assert 0 < proxy_bytes < 32 * 1024
            page.screenshot(path=str(tmp_path / "multipart-done.png"), full_page=True)
        finally:
            browser.close()
    # The object, read back through the proxy (a redirect to S3), is the generated file.
    token = _demo_token(demo, "employee")
    request = urllib.request.Request(
        f"{demo}/big/uploads/generated-{size}.bin", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    assert len(body) == size
    for offset in (0, 5 * 1024 * 1024 - 8, 17 * 1024 * 1024, size - 4096):
        assert body[offset : offset + 4096] == _generated(offset, 4096)[: len(body) - offset]
