"""`python -m proxy demo --sign-in`: the demo with browser sign-in through its embedded
OpenID Connect provider, as a process; the flow followed hop by hop over HTTP."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urlsplit

import pytest

from tests.test_demo import REPO

NAVIGATE = {"Accept": "text/html,*/*;q=0.8", "Sec-Fetch-Mode": "navigate"}


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "demo", "--port", "0", "--sign-in"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=env,
    )
    drain = None
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        output: list[str] = []
        while not any("Ctrl-C stops the demo" in line for line in output):
            line = process.stdout.readline()
            output.append(line)
            assert line or process.poll() is None, "".join(output)
            assert time.monotonic() < deadline, "demo did not start"
        text = "".join(output)
        assert "Sign-in provider:     http://127.0.0.1:" in text, text
        found = re.search(r"proxy at (http://127\.0\.0\.1:\d+)", text)
        assert found, text
        drain = threading.Thread(target=process.stdout.read, daemon=True)
        drain.start()
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=20)
        if drain is not None:
            drain.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def hop(
    url: str, headers: dict[str, str] | None = None, form: dict[str, str] | None = None
) -> tuple[int, dict[str, str], SimpleCookie, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=20)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        body = urlencode(form).encode() if form is not None else None
        sent = dict(headers or {})
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request("POST" if body is not None else "GET", target, body, sent)
        response = conn.getresponse()
        cookies: SimpleCookie = SimpleCookie()
        for value in response.headers.get_all("Set-Cookie") or []:
            cookies.load(value)
        return response.status, dict(response.headers), cookies, response.read()
    finally:
        conn.close()


def test_the_demo_signs_an_admin_in_and_hands_over_the_report(demo: str) -> None:
    status, headers, _, _ = hop(demo + "/admin/reports/q4-report.csv", NAVIGATE)
    assert status == 302
    status, headers, flow, _ = hop(demo + headers["Location"], NAVIGATE)
    assert status == 302
    status, headers, _, _ = hop(headers["Location"], form={"sub": "admin-1"})
    assert status == 302 and headers["Location"].startswith(demo + "/_auth/callback?")
    jar = "; ".join(f"{k}={m.value}" for k, m in flow.items())
    status, headers, session, _ = hop(headers["Location"], {**NAVIGATE, "Cookie": jar})
    assert status == 302 and headers["Location"] == "/admin/reports/q4-report.csv"
    token = session["access_token"].value
    status, _, _, body = hop(demo + headers["Location"], {"Cookie": f"access_token={token}"})
    assert status == 200 and body.startswith(b"quarter,revenue")
    # The demo's own tokens still work beside sign-in (its page hands them out).
    status, headers, _, _ = hop(demo + "/_demo/login?as=employee")
    assert status == 302
