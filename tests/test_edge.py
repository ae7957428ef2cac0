"""The connection edge over real sockets: parser refusals, absolute-form, Host, Expect, HEAD,
timeouts and the per-client connection cap. Every refusal is the proxy's JSON, never an echo."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.http import HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.edge import check_head, refusal_for_parse_error
from proxy.errors import HeaderFieldsTooLarge, UriTooLong

from .conftest import S3Objects, bearer, config_dict, make_token

ALICE = make_token("alice")
SECRET_MARK = "SECRETTOKENVALUE"


async def exchange(client: Any, data: bytes) -> bytes:
    """Send raw bytes, read until the server closes; fails the test if it never does."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


def parse(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    return status_line, headers, body


def request(target: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]


def assert_json_refusal(raw: bytes, status: int) -> dict[str, str]:
    status_line, headers, body = parse(raw)
    assert status_line.startswith(f"HTTP/1.1 {status} "), status_line
    assert headers["content-type"].startswith("application/json")
    assert headers["cache-control"] == "no-store"
    assert "server" not in headers
    assert set(json.loads(body)) == {"error"}
    assert SECRET_MARK.encode() not in raw
    return headers


# A. Parser-level refusals: the RFC's status, the proxy's body, nothing echoed, logged.

PARSER_CASES = [
    # (request bytes, status)
    (request(f"/public/42?token={SECRET_MARK}" + "a" * 20_000, "Host: proxy"), 414),
    (request(f"/public/42?token={SECRET_MARK}" + "a" * 8_200, "Host: proxy"), 414),
    (request(f"/public/42?token={SECRET_MARK}", "Host: proxy", method="FOO"), 501),
    (request(f"/public/42?token={SECRET_MARK}", "Host: proxy", method="PROPFIND"), 501),
    (request(f"/public/42?token={SECRET_MARK}", "Host: proxy", version="9.9"), 505),
    (request(f"/public/42?token={SECRET_MARK}", "Host: proxy", version="1.x"), 400),
    (request(f"/public/42?t={SECRET_MARK}", "Host: proxy", "X-Big: " + "b" * 9000), 431),
    (request(f"/public/42?t={SECRET_MARK}", "Host: proxy", "Bad Header: x"), 400),
    (f"GET /public/42?t={SECRET_MARK}\x01 HTTP/1.1\r\nHost: p\r\n\r\n".encode(), 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + SECRET_MARK.encode(), 400),
]


@pytest.mark.parametrize(("data", "status"), PARSER_CASES)
async def test_parser_refusals_are_json_http11_and_never_echo(
    proxy, data: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await proxy()
    raw = await exchange(client, data)
    assert_json_refusal(raw, status)
    (line,) = _access_lines(caplog)
    assert line["status"] == status
    assert line["reason"]
    assert SECRET_MARK not in caplog.text


async def test_the_whole_target_is_measured(proxy, s3: S3Objects) -> None:
    data = config_dict(s3.endpoint, limits={"max_target_length": 300})
    client = await proxy(data)
    base = "/public/42?pad="
    fits = await exchange(client, request(base + "x" * (300 - len(base)), "Host: p"))
    assert parse(fits)[0].startswith("HTTP/1.1 200 ")
    over = await exchange(client, request(base + "x" * (301 - len(base)), "Host: p"))
    assert_json_refusal(over, 414)


def test_a_too_long_line_is_told_apart_by_its_limit() -> None:
    from aiohttp.http_exceptions import LineTooLong

    assert isinstance(refusal_for_parse_error(LineTooLong(b"x", 8224), 8224), UriTooLong)
    assert isinstance(refusal_for_parse_error(LineTooLong(b"x", 8190), 8224), HeaderFieldsTooLarge)


# B. Absolute-form targets route on their (raw) path; the query is kept.


async def test_absolute_form_is_routed_on_its_path(proxy, s3: S3Objects) -> None:
    client = await proxy()
    raw = await exchange(client, request("http://proxy.example/public/42", "Host: other"))
    status_line, _, body = parse(raw)
    assert status_line.startswith("HTTP/1.1 200 ")
    assert body == s3.photo
    raw = await exchange(client, request(f"http://p/stream/photos/42?token={ALICE}", "Host: p"))
    assert parse(raw)[0].startswith("HTTP/1.1 200 ")


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("http://p/stream/photos/4%2F2", 400),  # %2F stays inside a segment, as in origin-form
        ("http://p/nowhere", 404),
        ("ftp://p/public/42", 400),
        ("http://user:pw@p/public/42", 400),
    ],
)
async def test_absolute_form_refusals(proxy, target: str, status: int) -> None:
    client = await proxy()
    raw = await exchange(client, request(target, "Host: p", f"Authorization: Bearer {ALICE}"))
    assert_json_refusal(raw, status)


def test_absolute_form_rewrite_keeps_the_raw_path_and_query() -> None:
    target = "http://h:8/a%2Fb/c?x=%20y"
    headers = CIMultiDictProxy(CIMultiDict(Host="h"))
    raw = RawRequestMessage(
        "GET", target, HttpVersion11, headers, (), False, None, False, False, URL(target)
    )
    message, refusal, _ = check_head(raw, 8192)
    assert refusal is None
    assert message.path == "/a%2Fb/c?x=%20y"
    assert message.url.raw_path == "/a%2Fb/c"
    assert message.url.raw_query_string == "x=%20y"


# C. Host must be one valid uri-host[:port].


@pytest.mark.parametrize(
    "headers",
    [
        ("Host: a b",),
        ("Host: a/b",),
        ("Host: a\x7fb",),
        ("Host: ",),
        ("Host: a", "Host: b"),
        (),  # HTTP/1.1 without Host
    ],
)
async def test_invalid_host_is_400(proxy, headers: tuple[str, ...]) -> None:
    client = await proxy()
    raw = await exchange(client, request("/public/42", *headers))
    assert_json_refusal(raw, 400)


@pytest.mark.parametrize("host", ["proxy", "proxy.example:8080", "[::1]:80", "127.0.0.1"])
async def test_valid_hosts_pass(proxy, host: str) -> None:
    client = await proxy()
    raw = await exchange(client, request("/public/42", f"Host: {host}"))
    assert parse(raw)[0].startswith("HTTP/1.1 200 ")


async def test_http10_needs_no_host(proxy) -> None:
    client = await proxy()
    raw = await exchange(client, request("/public/42", version="1.0"))
    assert b" 200 " in raw.split(b"\r\n", 1)[0]


# D. Expect: 100-continue on the sign API.


async def _sign_with_expect(client: Any, content_type: str, length: int) -> tuple[bytes, Any]:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = (
        "POST /_sign HTTP/1.1\r\nHost: p\r\nConnection: close\r\nExpect: 100-continue\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
        f"Authorization: Bearer {ALICE}\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    async with asyncio.timeout(5):
        first = await reader.readuntil(b"\r\n\r\n")
    return first, (reader, writer)


async def test_expect_100_continue_is_answered_before_the_body(proxy) -> None:
    client = await proxy()
    body = json.dumps({"paths": ["/photos/42"]}).encode()
    first, (reader, writer) = await _sign_with_expect(client, "application/json", len(body))
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    async with asyncio.timeout(5):
        raw = await reader.read()
    writer.close()
    status_line, _, answer = parse(raw)
    assert status_line.startswith("HTTP/1.1 200 ")
    assert "url" in json.loads(answer)["results"][0]


@pytest.mark.parametrize(
    ("content_type", "length", "status"),
    [("text/plain", 10, 415), ("application/json", 50 * 1024 * 1024, 413)],
)
async def test_expect_gets_a_final_status_when_the_body_would_be_refused(
    proxy, content_type: str, length: int, status: int
) -> None:
    client = await proxy()
    first, (_, writer) = await _sign_with_expect(client, content_type, length)
    writer.close()
    assert first.startswith(f"HTTP/1.1 {status} ".encode())


async def test_unknown_expectation_is_417(proxy) -> None:
    client = await proxy()
    raw = await exchange(client, request("/public/42", "Host: p", "Expect: teapot"))
    assert_json_refusal(raw, 417)


# E. HEAD answers as GET would, without the body.

_VARYING = {"date", "x-request-id"}  # the request id: each request its own


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/photos/42", {"Accept": "application/json"}),  # the JSON link answer
        ("/stream/photos/42", {}),
        ("/stream/photos/nobody", {}),
        ("/stream/photos/42", {"Authorization": "Bearer nope"}),
        ("/admin/exports/q4.pdf", {}),
        ("/nowhere", {}),
        ("/public/42", {"If-None-Match": "*"}),
    ],
)
async def test_head_matches_get(proxy, path: str, headers: dict[str, str]) -> None:
    client = await proxy()
    headers = {**bearer(ALICE), **headers} if "Authorization" not in headers else headers
    got = await client.get(path, headers=headers, allow_redirects=False)
    await got.read()
    head = await client.head(path, headers=headers, allow_redirects=False)
    assert head.status == got.status
    assert await head.read() == b""
    same = {k.lower(): v for k, v in got.headers.items() if k.lower() not in _VARYING}
    assert {k.lower(): v for k, v in head.headers.items() if k.lower() not in _VARYING} == same


async def test_head_of_a_redirect_has_the_gets_fields(proxy) -> None:
    """Only Location differs (a presigned HEAD URL, since a GET one would not do)."""
    client = await proxy()
    got = await client.get("/photos/42", headers=bearer(ALICE), allow_redirects=False)
    head = await client.head("/photos/42", headers=bearer(ALICE), allow_redirects=False)
    assert got.status == head.status == 302
    assert head.headers["Content-Length"] == got.headers["Content-Length"] == "0"
    assert set(head.headers) - _VARYING_NAMES == set(got.headers) - _VARYING_NAMES


_VARYING_NAMES = {"Date"}


# F. A presigned URL tells S3 to keep private files out of shared caches.


def _signed_cache_control(location: str) -> list[str]:
    return parse_qs(urlsplit(location).query).get("response-cache-control", [])


async def test_redirects_sign_private_cache_control_by_default(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get(
        "/admin/links/q4.pdf", headers=bearer(make_token(role="admin")), allow_redirects=False
    )
    assert response.status == 302
    assert _signed_cache_control(response.headers["Location"]) == ["private"]
    routed = await client.get("/photos/42", headers=bearer(ALICE), allow_redirects=False)
    assert _signed_cache_control(routed.headers["Location"]) == ["private, max-age=300"]


async def test_the_signed_cache_control_default_can_be_turned_off(proxy, s3: S3Objects) -> None:
    data = config_dict(s3.endpoint, s3={"redirect_cache_control": None})
    client = await proxy(data)
    response = await client.get(
        "/admin/links/q4.pdf", headers=bearer(make_token(role="admin")), allow_redirects=False
    )
    assert _signed_cache_control(response.headers["Location"]) == []


# G. Slow, silent and too many connections.


def _timeouts(s3: S3Objects, **limits: Any) -> dict[str, Any]:
    base = {"header_timeout": 0.3, "keepalive_timeout": 0.3}
    return config_dict(s3.endpoint, limits={**base, **limits})


async def test_a_silent_connection_is_closed_after_the_header_timeout(proxy, s3) -> None:
    client = await proxy(_timeouts(s3))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    started = time.monotonic()
    async with asyncio.timeout(3):
        assert await reader.read() == b""  # closed without a word: nothing was asked
    writer.close()
    assert 0.25 <= time.monotonic() - started < 2


async def test_a_slowloris_head_gets_408_at_the_deadline(proxy, s3, caplog) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    client = await proxy(_timeouts(s3))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    started = time.monotonic()
    writer.write(b"GET /public/42 HTTP/1.1\r\nHost: p\r\n")

    async def trickle() -> None:
        for i in range(100):
            await asyncio.sleep(0.05)
            writer.write(f"X-Slow-{i}: y\r\n".encode())

    dripping = asyncio.ensure_future(trickle())
    try:
        async with asyncio.timeout(3):
            raw = await reader.read()
    finally:
        dripping.cancel()
        writer.close()
    assert 0.25 <= time.monotonic() - started < 2
    assert_json_refusal(raw, 408)
    assert parse(raw)[1]["connection"] == "close"
    assert [line["status"] for line in _access_lines(caplog)] == [408]


async def test_an_idle_keepalive_connection_closes(proxy, s3: S3Objects) -> None:
    client = await proxy(_timeouts(s3))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    ask = b"GET /public/42 HTTP/1.1\r\nHost: p\r\n\r\n"
    for _ in range(2):  # reused within the limit: still open
        writer.write(ask)
        async with asyncio.timeout(3):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(parse(head + b"\r\n\r\n")[1]["content-length"])
            await reader.readexactly(length)
        await asyncio.sleep(0.1)
    idle = time.monotonic()
    async with asyncio.timeout(3):
        assert await reader.read() == b""
    writer.close()
    assert 0.15 <= time.monotonic() - idle < 2


async def test_a_slow_download_outlives_the_header_timeout(proxy, s3: S3Objects) -> None:
    client = await proxy(_timeouts(s3, header_timeout=0.2, keepalive_timeout=0.2))
    response = await client.get("/stream/photos/42", headers=bearer(ALICE))
    await asyncio.sleep(0.5)  # the handler is done; only unread bytes remain
    assert await response.read() == s3.photo
    big = await client.get("/admin/exports/big.bin", headers=bearer(make_token(role="admin")))
    received = 0
    async for chunk in big.content.iter_chunked(256 * 1024):
        received += len(chunk)
        await asyncio.sleep(0.05)
    assert received == len(s3.big)


async def test_connections_past_the_per_client_cap_are_closed_at_once(proxy, s3) -> None:
    client = await proxy(_timeouts(s3, header_timeout=5, max_connections_per_client=3))
    pool = [await asyncio.open_connection(client.server.host, client.server.port) for _ in range(3)]
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    async with asyncio.timeout(2):
        assert await reader.read() == b""
    writer.close()
    first_reader, first_writer = pool[0]
    first_writer.write(request("/public/42", "Host: p"))
    async with asyncio.timeout(3):
        assert (await first_reader.read()).startswith(b"HTTP/1.1 200 ")
    for _, pooled in pool:
        pooled.close()
    await asyncio.sleep(0.1)  # the closes reach the server: the slots are free again
    raw = await exchange(client, request("/public/42", "Host: p"))
    assert raw.startswith(b"HTTP/1.1 200 ")


# H. No library version in the Server header.


async def test_no_server_header(proxy) -> None:
    client = await proxy()
    for path in ("/public/42", "/nowhere"):
        response = await client.get(path)
        await response.read()
        assert "Server" not in response.headers


# I. Request-line versions and message framing (RFC 9110 2.5, RFC 9112 2.3, 6.1, 6.3).


async def read_answer(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """One answer with a Content-Length body off a kept-alive connection."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, headers, _ = parse(head)
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status_line, headers, body


@pytest.mark.parametrize("version", ["2.0", "3.0", "9.9"])
async def test_a_major_version_over_1_is_505_and_closed(proxy, version: str) -> None:
    client = await proxy()
    # No Connection: close: the server closes by itself (exchange reads to the end).
    raw = await exchange(client, f"GET /public/42 HTTP/{version}\r\nHost: p\r\n\r\n".encode())
    headers = assert_json_refusal(raw, 505)
    assert headers["connection"] == "close"


@pytest.mark.parametrize(
    "data",
    [
        b"GET /public/42\r\n\r\n",
        b"GET /public/42\r\nHost: p\r\n\r\n",
        b"GET /public/42 HTTP/0.9\r\n\r\n",
    ],
)
async def test_a_request_line_without_a_version_is_400_never_http09(proxy, data: bytes) -> None:
    client = await proxy()
    raw = await exchange(client, data)
    assert_json_refusal(raw, 400)
    assert b"HTTP/0.9" not in raw
    assert raw.count(b"HTTP/1.1 ") == 1  # one answer, then closed


async def test_http12_is_served_as_http11_on_every_request_of_a_connection(
    proxy, s3: S3Objects
) -> None:
    client = await proxy()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    ask = b"GET /public/42 HTTP/1.2\r\nHost: p\r\n\r\n"
    try:
        writer.write(ask)  # the first on the connection
        status_line, _, body = await read_answer(reader)
        assert status_line == "HTTP/1.1 200 OK"
        assert body == s3.photo
        writer.write(ask)  # a later one, kept alive
        assert (await read_answer(reader))[0] == "HTTP/1.1 200 OK"
        writer.write(ask * 3)  # pipelined in one write
        for _ in range(3):
            assert (await read_answer(reader))[0] == "HTTP/1.1 200 OK"
        writer.write(ask[:20])  # a request line split across reads
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(ask[20:])
        assert (await read_answer(reader))[0] == "HTTP/1.1 200 OK"
    finally:
        writer.close()


async def test_a_body_is_never_rewritten_however_it_looks(proxy, s3: S3Objects) -> None:
    """An upload body made of HTTP/1.2 request lines, in the same read as its HTTP/1.2 head
    and in reads of its own, is stored byte for byte; the request after it is served."""
    from .test_uploads import ALICE_TOKEN, BUCKET, upload_config

    client = await proxy(upload_config(s3.endpoint))
    body = b"GET /public/42 HTTP/1.2\r\nHost: p\r\n\r\n" * 4
    head = (
        f"PUT /up/edge/body.txt HTTP/1.2\r\nHost: p\r\nContent-Type: text/plain\r\n"
        f"Authorization: Bearer {ALICE_TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head + body[:30])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body[30:])
        assert (await read_answer(reader))[0] == "HTTP/1.1 201 Created"
        writer.write(b"GET /public/42 HTTP/1.2\r\nHost: p\r\n\r\n")  # after a body's end
        assert (await read_answer(reader))[0] == "HTTP/1.1 200 OK"
    finally:
        writer.close()
    import boto3

    stored = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1").get_object(
        Bucket=BUCKET, Key="uploads/alice/edge/body.txt"
    )
    assert stored["Body"].read() == body


async def test_http10_is_answered_with_an_http11_status_line(proxy, s3: S3Objects) -> None:
    client = await proxy()
    raw = await exchange(client, b"GET /public/42 HTTP/1.0\r\n\r\n")  # closes by itself
    status_line, headers, body = parse(raw)
    assert status_line == "HTTP/1.1 200 OK"
    assert headers["connection"] == "close"
    assert "transfer-encoding" not in headers
    assert body == s3.photo
    # Kept alive when it asks, as HTTP/1.0 says.
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        for _ in range(2):
            writer.write(b"GET /public/42 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status_line, headers, _ = await read_answer(reader)
            assert status_line == "HTTP/1.1 200 OK"
            assert headers["connection"] == "keep-alive"
    finally:
        writer.close()
    refusal = await exchange(client, b"GET /nowhere HTTP/1.0\r\n\r\n")
    assert_json_refusal(refusal, 404)


@pytest.mark.parametrize(
    ("codings", "status"),
    [
        ("gzip, chunked", 501),
        ("identity, chunked", 501),
        ("chunked, gzip", 400),  # chunked not last: the length cannot be known (RFC 9112 6.3)
        ("gzip", 400),
    ],
)
async def test_transfer_codings_other_than_chunked(proxy, codings: str, status: int) -> None:
    client = await proxy()
    data = (
        f"PUT /public/42 HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: {codings}\r\n\r\n"
        "5\r\nhello\r\n0\r\n\r\n"
    ).encode()
    raw = await exchange(client, data)  # no Connection: close: closed by the server
    assert_json_refusal(raw, status)


async def test_transfer_encoding_on_http10_is_400_and_closed(proxy) -> None:
    client = await proxy()
    data = (
        b"PUT /public/42 HTTP/1.0\r\nHost: p\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    raw = await exchange(client, data)
    headers = assert_json_refusal(raw, 400)
    assert headers["connection"] == "close"


async def test_options_asterisk_is_400(proxy) -> None:
    client = await proxy()
    raw = await exchange(client, request("*", "Host: p", method="OPTIONS"))
    assert_json_refusal(raw, 400)
