"""The JSON access log: one line per request, the agreed fields, and never a secret."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from proxy.logs import JsonLines, RedactSecrets, quiet_noisy_libraries, redact

from .conftest import S3Objects, bearer, make_token


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]


async def test_one_json_line_per_request_with_the_agreed_fields(
    proxy, s3: S3Objects, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    client = await proxy()
    token = make_token("alice")
    ok = await client.get("/stream/photos/42", headers=bearer(token))
    await ok.read()
    moved = await client.get("/photos/42", headers=bearer(token), allow_redirects=False)
    refused = await client.get("/admin/exports/q4.pdf", headers=bearer(token))

    stream, redirect, denied = _lines(caplog)
    # One id per request: in its answer's X-Request-Id and in its access line.
    answered = [r.headers["X-Request-Id"] for r in (ok, moved, refused)]
    assert [line["request_id"] for line in (stream, redirect, denied)] == answered
    assert len(set(answered)) == 3
    assert set(stream) >= {
        "time",
        "request_id",
        "route",
        "sub",
        "method",
        "status",
        "bytes",
        "duration_ms",
        "delivery",
    }
    assert stream["route"] == "photo-stream"
    assert stream["sub"] == "alice"
    assert stream["method"] == "GET"
    assert stream["status"] == 200
    assert stream["bytes"] == len(s3.photo)
    assert stream["delivery"] == "stream"
    assert redirect["status"] == 302
    assert redirect["delivery"] == "redirect"
    assert denied["status"] == 403
    assert denied["reason"] == "claim 'role' missing"  # the log says why; the body never does


async def test_no_token_cookie_or_signature_reaches_the_log(
    proxy, caplog: pytest.LogCaptureFixture
) -> None:
    quiet_noisy_libraries()  # what `serve --log-level DEBUG` does
    caplog.set_level(logging.DEBUG)
    client = await proxy()
    token = make_token("alice")
    for response in (
        await client.get("/stream/photos/42", params={"token": token}),
        await client.get("/stream/photos/42", headers={"Cookie": f"access_token={token}; x=1"}),
    ):
        assert response.status == 200
        await response.read()
    redirect = await client.get("/photos/42", headers=bearer(token), allow_redirects=False)
    signature = redirect.headers["Location"].split("X-Amz-Signature=")[1]
    await client.get("/stream/photos/42", headers=bearer(token + "tampered"))

    text = "\n".join(r.getMessage() for r in caplog.records)
    assert len(_lines(caplog)) == 4
    assert token not in text
    assert token.split(".")[2] not in text  # not even the signature part alone
    assert signature not in text
    assert "X-Amz-Credential" not in text


async def test_failures_say_why_in_the_log(proxy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    client = await proxy()
    await client.get("/stream/photos/42", headers=bearer(make_token(ttl=-3600)))
    await client.get("/stream/photos/999", headers=bearer(make_token()))
    expired, missing = _lines(caplog)
    assert (expired["status"], expired["reason"]) == (401, "token expired")
    assert (missing["status"], missing["reason"]) == (404, "GetObject: no such key")


def test_library_log_lines_are_redacted_too() -> None:
    token = make_token("alice")
    line = (
        f"Error handling request: b'GET /p/caf\\xc3\\xa9.txt?token={token}&x=1 HTTP/1.1' "
        "Cookie: access_token=abc.def; Authorization: Bearer xyz "
        "https://s3/b/k?X-Amz-Credential=AKIA%2F20260101&X-Amz-Signature=abcdef0123"
    )
    cleaned = redact(line)
    assert token not in cleaned
    assert "abc.def" not in cleaned and "xyz" not in cleaned
    assert "abcdef0123" not in cleaned and "AKIA" not in cleaned
    assert "GET /p/caf" in cleaned  # the rest stays readable


def test_diagnostics_are_one_redacted_json_line_each() -> None:
    """stderr's lines: time, level, logger, message; a traceback inside its line, redacted."""
    token = make_token("alice")
    formatter = JsonLines()
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "bad", None, None)
    try:
        raise ValueError(f"request line GET /x?token={token}\nsecond line")
    except ValueError:
        record.exc_info = sys.exc_info()
    record.msg = f"Error handling request /x?token={token}"
    RedactSecrets().filter(record)
    text = formatter.format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert (line["level"], line["logger"]) == ("error", "aiohttp.server")
    assert line["message"] == "Error handling request /x?token=<redacted-jwt>"
    assert "ValueError" in line["exception"] and token not in line["exception"]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.25, "250.0"), (0.0012344, "1.234"), (0.0012346, "1.235"), (12.0000004, "12000.0")],
)
def test_duration_is_milliseconds_to_the_microsecond(seconds: float, shown: str) -> None:
    from proxy.accesslog import write_access_line, write_lines_to
    from proxy.request import RequestContext

    lines: list[str] = []
    write_lines_to(lines.append)
    try:
        write_access_line(RequestContext("GET", "/p", "127.0.0.1"), 1_900_000_000.5, seconds)
    finally:
        write_lines_to(None)
    assert f'"duration_ms":{shown},' in lines[0]


@pytest.mark.parametrize(
    ("now", "shown"),
    [
        (1_900_000_000.5, "2030-03-17T17:46:40.500+00:00"),
        (1_900_000_000.0, "2030-03-17T17:46:40.000+00:00"),
        (1_900_000_000.0419, "2030-03-17T17:46:40.041+00:00"),  # cut, not rounded
        (1_900_000_000.9999, "2030-03-17T17:46:40.999+00:00"),
        (1_900_000_001.0075, "2030-03-17T17:46:41.007+00:00"),  # the next second
        (1_900_000_000.25, "2030-03-17T17:46:40.250+00:00"),  # and back
    ],
)
def test_time_is_utc_to_the_millisecond(now: float, shown: str) -> None:
    """The line's time (its date-time part formatted once per second, its milliseconds
    looked up) reads as the audit trail's `timestamp()` gives."""
    from proxy.accesslog import timestamp, write_access_line, write_lines_to
    from proxy.request import RequestContext

    lines: list[str] = []
    write_lines_to(lines.append)
    try:
        write_access_line(RequestContext("GET", "/p", "127.0.0.1"), now, 0.001)
    finally:
        write_lines_to(None)
    assert json.loads(lines[0])["time"] == shown == timestamp(now)


async def test_each_request_is_logged_with_its_own_tokens_caller(
    proxy, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller's facts are remembered per token: alternating tokens never lend one
    request another's subject."""
    caplog.set_level(logging.INFO, logger="proxy.access")
    client = await proxy()
    tokens = {"alice": make_token("alice"), "bob": make_token("bob")}
    order = ["alice", "bob", "alice", "bob", "bob", "alice"]
    for name in order:
        response = await client.get(
            "/photos/42", headers=bearer(tokens[name]), allow_redirects=False
        )
        assert response.status == 302
    assert [line["sub"] for line in _lines(caplog)] == order
