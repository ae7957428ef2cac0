"""Answers whose head the proxy writes itself (proxy/wire.py): the streamed object's 200/206,
the cached object's 200 and the redirect's 302. What aiohttp and edge.py did for them must
still hold (no header injection, HTTP/1.0 framing, HEAD, Connection: close while closing,
CORS, keep-alive and pipelining), and what wire.py leans on in aiohttp is pinned here."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.helpers import must_be_empty_body
from aiohttp.http_writer import StreamWriter, _serialize_headers
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.storage import ObjectMeta
from proxy.wire import WireHead, WireResponse, header_lines

from .conftest import S3Objects, bearer, config_dict, make_token
from .fakes import FakeStorage
from .test_edge import exchange, parse, read_answer

TOKEN = make_token("alice")
ALICE = bearer(TOKEN)
BODY = bytes(range(256)) * 40  # 10 KiB
PHOTO = ("hr-private", "employees/42/photo.jpg")
# The three hot answers: streamed from S3, from the object cache (a second GET), redirected.
PATHS = ["/stream/photos/42", "/cached/photos/42", "/photos/42"]


# A. What wire.py leans on, without sockets.


class _Wire:
    """A transport that records each write: one entry per syscall the real one would make."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks: list[bytes]) -> None:
        self.writes.append(b"".join(chunks))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _request(method: str = "GET", closing: bool = False) -> tuple[Any, _Wire]:
    wire = _Wire()
    protocol = SimpleNamespace(
        transport=wire, _paused=False, ssl_context=None, peername=None, sockname=None
    )
    writer = StreamWriter(protocol, asyncio.get_running_loop())  # type: ignore[arg-type]
    request = make_mocked_request(
        method, "/s/k", writer=writer, protocol=protocol, transport=wire, closing=closing
    )
    return request, wire


async def test_a_streamed_head_goes_out_with_the_first_body_bytes() -> None:
    """Issue 26: one write (syscall, TCP segment) for the head and the first body bytes."""
    request, wire = _request()
    response = WireResponse(200, WireHead({"Content-Type": "image/png"}), 5)
    response.request_id = "abc"
    await response.prepare(request)
    assert wire.writes == []
    assert response.prepared and response.keep_alive is True
    await response.write(b"hel")
    await response.write(b"lo")
    await response.write_eof()
    assert len(wire.writes) == 2
    head, _, body = wire.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"hel"
    assert wire.writes[1] == b"lo"
    lines = head.split(b"\r\n")[1:]
    assert b"Content-Type: image/png" in lines
    assert b"Content-Length: 5" in lines
    assert b"X-Request-Id: abc" in lines
    assert any(line.startswith(b"Date: ") for line in lines)
    assert not any(line.lower().startswith((b"server", b"connection")) for line in lines)
    # aiohttp's handle_error and finish_response read these after the answer.
    assert request.writer.output_size == sum(map(len, wire.writes))
    assert response.body_length == request.writer.output_size


async def test_a_whole_body_goes_out_with_its_head_in_one_write() -> None:
    request, wire = _request(closing=True)
    response = WireResponse(302, WireHead({"Location": "https://s3/x"}), 0)
    response.age = 7
    await response.prepare(request)
    assert response.keep_alive is False
    await response.write_eof()
    assert len(wire.writes) == 1
    status_line, headers, body = parse(wire.writes[0])
    assert status_line == "HTTP/1.1 302 Found"
    assert headers["location"] == "https://s3/x"
    assert headers["content-length"] == "0"
    assert headers["age"] == "7"
    assert headers["connection"] == "close"
    assert "content-type" not in headers  # no body, no type (as aiohttp)
    assert body == b""


async def test_head_sends_no_body_and_no_byte_past_the_length() -> None:
    request, wire = _request("HEAD")
    response = WireResponse(200, WireHead({}), 4, b"body")
    await response.prepare(request)
    await response.write_eof()
    _, headers, body = parse(wire.writes[0])
    assert (headers["content-length"], body) == ("4", b"")
    assert "content-type" not in headers  # as aiohttp: its default is for a body sent
    request, wire = _request()
    response = WireResponse(200, WireHead({}), 4)
    await response.prepare(request)
    await response.write(b"bodyEXTRA")
    await response.write(b"more")
    await response.write_eof()
    sent = b"".join(wire.writes)
    assert sent.endswith(b"\r\n\r\nbody")
    assert b"Content-Type: application/octet-stream\r\n" in sent  # aiohttp's default


@pytest.mark.parametrize("method", ["GET", "HEAD", "CONNECT", "PUT"])
@pytest.mark.parametrize("status", [100, 200, 204, 206, 302, 304, 404])
async def test_a_body_is_sent_when_aiohttp_would_send_one(method: str, status: int) -> None:
    """wire.py inlines aiohttp's must_be_empty_body: pinned against it."""
    request, wire = _request(method)
    response = WireResponse(status, WireHead({"Content-Type": "text/plain"}), 4, b"body")
    await response.prepare(request)
    await response.write_eof()
    _, headers, body = parse(b"".join(wire.writes))
    sent = not must_be_empty_body(method, status)
    assert body == (b"body" if sent else b"")
    assert response._must_be_empty_body is not sent
    if status in (100, 204, 304):
        assert "content-length" not in headers
    else:
        assert headers["content-length"] == "4"


async def test_writes_are_accounted_and_drained_as_aiohttps_writer_does() -> None:
    request, wire = _request()
    response = WireResponse(200, WireHead({"Content-Type": "text/plain"}), 200_000)
    await response.prepare(request)
    writer = request.writer
    drained = []

    async def drain() -> None:
        drained.append(writer.buffer_size)

    writer.drain = drain
    await response.write(b"x" * 40_000)
    assert drained == [] and writer.buffer_size == writer.output_size > 40_000
    await response.write(b"x" * 40_000)  # past 64 KiB since the last drain: drains
    assert drained == [0] and writer.buffer_size == 0
    await response.write(b"x" * 120_000)
    await response.write_eof()  # the end drains too, as StreamWriter.write_eof
    assert len(drained) == 2
    assert writer.output_size == sum(map(len, wire.writes)) == response.body_length
    assert response._eof_sent


async def test_a_closing_transport_is_a_connection_error() -> None:
    """aiohttp's handler takes a ConnectionError as 'client disconnected' (finish_response's
    reset); the stream relay and the Gateway do too."""
    request, wire = _request()
    wire.is_closing = lambda: True  # type: ignore[method-assign]
    response = WireResponse(200, WireHead({}), 3)
    await response.prepare(request)
    with pytest.raises(ConnectionError):
        await response.write(b"abc")
    response = WireResponse(200, WireHead({}), 3, b"abc")
    await response.prepare(request)
    with pytest.raises(ConnectionError):
        await response.write_eof()
    assert wire.writes == []


@pytest.mark.parametrize(
    "fields",
    [
        {"Content-Disposition": "attachment; filename*=UTF-8''%E6%97%A5"},
        {"X-Odd": "tab\tand ünïcode 日本 and a lone \ud800 surrogate"},
        {"Vary": "Accept", "Cache-Control": "private, max-age=3"},
    ],
)
def test_fields_are_encoded_as_aiohttp_encodes_them(fields: dict[str, str]) -> None:
    expected = _serialize_headers("HTTP/1.1 200 OK", CIMultiDict(fields))
    assert b"HTTP/1.1 200 OK\r\n" + header_lines(fields) + b"\r\n" == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"Location": "https://s3/x\r\nSet-Cookie: stolen=1"},
        {"Content-Disposition": "attachment\nX-Injected: 1"},
        {"X-A": "nul\x00"},
        {"X-A": "del\x7f"},
        {"X-Bad\r\nName": "v"},
    ],
)
def test_control_characters_are_refused_as_aiohttp_refuses_them(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="control character"):
        header_lines(fields)
    with pytest.raises(ValueError):
        WireHead(fields)
    with pytest.raises(ValueError):
        _serialize_headers("HTTP/1.1 200 OK", CIMultiDict(fields))


@pytest.mark.parametrize("name", ["Content-Length", "date", "Connection", "X-Request-Id", "Age"])
def test_a_head_never_holds_the_lines_made_per_request(name: str) -> None:
    with pytest.raises(ValueError, match="per request"):
        WireHead({name: "1"})


async def test_edited_headers_are_checked_and_written() -> None:
    request, wire = _request()
    response = WireResponse(200, WireHead({"Vary": "Accept"}), 0)
    response.headers["Vary"] = "Accept, Origin"
    response.headers.add("Set-Cookie", "a=1")
    await response.prepare(request)
    await response.write_eof()
    _, headers, _ = parse(wire.writes[0])
    assert (headers["vary"], headers["set-cookie"]) == ("Accept, Origin", "a=1")
    response = WireResponse(200, WireHead({}), 0)
    response.headers["X-Evil"] = "a\r\nb: c"
    with pytest.raises(ValueError):
        await response.prepare(_request()[0])


# B. Over real sockets: the three hot answers.


def _config() -> dict[str, Any]:
    data = config_dict()
    cached = dict(data["routes"][1], name="cached-photos", match="/cached/photos/{employee_id}")
    cached["cache"] = {"max_age": 60}
    data["routes"].insert(2, cached)
    return data


async def _start(proxy: Any, data: dict[str, Any] | None = None, **objects: bytes) -> Any:
    fake = FakeStorage(objects={PHOTO: BODY, **{k: v for k, v in objects.items()}})
    client = await proxy(data or _config(), storage=fake)
    # The cached path: the first GET fills the cache, the next ones are answered from it.
    warm = await client.get("/cached/photos/42", headers=ALICE)
    assert warm.status == 200
    await warm.read()
    return client


def _ask(path: str, *lines: str, method: str = "GET", version: str = "1.1") -> bytes:
    head = [f"{method} {path} HTTP/{version}", "Host: p", f"Authorization: Bearer {TOKEN}"]
    return ("\r\n".join([*head, *lines]) + "\r\n\r\n").encode()


def _check(path: str, status_line: str, headers: dict[str, str], body: bytes) -> None:
    if path.startswith("/photos"):
        assert status_line == "HTTP/1.1 302 Found"
        assert headers["location"].startswith("https://")
        assert headers["content-length"] == "0"
    else:
        assert status_line == "HTTP/1.1 200 OK"
        assert headers["content-length"] == str(len(BODY))
        assert body in (BODY, b"")
    assert "server" not in headers
    assert "transfer-encoding" not in headers
    assert len(headers["x-request-id"]) == 16
    assert headers["date"].endswith(" GMT")


@pytest.mark.parametrize("path", PATHS)
async def test_http10_gets_an_http11_status_line_and_is_closed(proxy, path: str) -> None:
    client = await _start(proxy)
    status_line, headers, body = parse(await exchange(client, _ask(path, version="1.0")))
    _check(path, status_line, headers, body)
    assert headers["connection"] == "close"
    # Kept alive when it asks, as HTTP/1.0 says.
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        for _ in range(2):
            writer.write(_ask(path, "Connection: keep-alive", version="1.0"))
            status_line, headers, body = await read_answer(reader)
            _check(path, status_line, headers, body)
            assert headers["connection"] == "keep-alive"
    finally:
        writer.close()


@pytest.mark.parametrize("path", PATHS)
async def test_keep_alive_and_pipelining(proxy, path: str) -> None:
    client = await _start(proxy)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(_ask(path) * 3 + _ask(path, method="HEAD") + _ask(path))
        ids = set()
        for method in ("GET", "GET", "GET", "HEAD", "GET"):
            if method == "HEAD":
                async with asyncio.timeout(5):
                    status_line, headers, body = parse(await reader.readuntil(b"\r\n\r\n"))
            else:
                status_line, headers, body = await read_answer(reader)
            # (Had the HEAD answer sent a body, the next status line would not parse.)
            _check(path, status_line, headers, body)
            assert "connection" not in headers
            ids.add(headers["x-request-id"])
        assert len(ids) == 5
        writer.write(_ask(path, "Connection: close"))
        status_line, headers, body = await read_answer(reader)
        _check(path, status_line, headers, body)
        assert headers["connection"] == "close"
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed after it
    finally:
        writer.close()


@pytest.mark.parametrize("path", PATHS)
async def test_head_carries_the_gets_fields_without_a_body(proxy, path: str) -> None:
    client = await _start(proxy)
    got = parse(await exchange(client, _ask(path, "Connection: close")))
    head = parse(await exchange(client, _ask(path, "Connection: close", method="HEAD")))
    assert head[2] == b""
    varying = {"date", "x-request-id", "location"}  # a HEAD gets a presigned HEAD URL
    assert {k: v for k, v in head[1].items() if k not in varying} == {
        k: v for k, v in got[1].items() if k not in varying
    }
    _check(path, head[0], head[1], head[2])


@pytest.mark.parametrize("path", PATHS)
async def test_every_answer_says_connection_close_while_the_edge_closes(proxy, path: str) -> None:
    client = await _start(proxy)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(_ask(path))
        assert "connection" not in (await read_answer(reader))[1]
        client.server.runner.server.closing = True  # edge.py rule 7: shutdown began
        writer.write(_ask(path))
        status_line, headers, body = await read_answer(reader)
        _check(path, status_line, headers, body)
        assert headers["connection"] == "close"
        async with asyncio.timeout(5):
            assert await reader.read() == b""
    finally:
        writer.close()


APP = "https://app.example"


@pytest.mark.parametrize("path", PATHS)
async def test_cors_answers_carry_their_fields_once(proxy, path: str) -> None:
    data = _config()
    for route in data["routes"][:3]:
        route["cors"] = {"origins": [APP], "credentials": True}
    client = await _start(proxy, data)
    for origin, allowed in ((APP, True), ("https://evil.example", False), (None, False)):
        lines = [f"Origin: {origin}"] if origin else []
        raw = await exchange(client, _ask(path, *lines, "Connection: close"))
        status_line, headers, body = parse(raw)
        _check(path, status_line, headers, body)
        assert raw.lower().count(b"\r\nvary:") == 1
        vary = [part.strip() for part in headers["vary"].split(",")]
        assert vary.count("Origin") == 1 and "Authorization" in vary
        if allowed:
            assert headers["access-control-allow-origin"] == APP
            assert headers["access-control-allow-credentials"] == "true"
            assert "X-Request-Id" in headers["access-control-expose-headers"]
        else:
            assert "access-control-allow-origin" not in headers


# C. Hostile keys and metadata never make a header of their own.

ODD_NAME = '日本 ü;"x".bin'


@pytest.mark.parametrize("path", ["/me/", "/cached-me/", "/links/"])
async def test_a_non_latin1_key_is_encoded_never_raw(proxy, s3: S3Objects, path: str) -> None:
    data = _config()
    data["s3"]["endpoint_url"] = s3.endpoint  # presigned by the real engine (no S3 call)
    mine = dict(data["routes"][5], name="cached-me", match="/cached-me/{path:.+}")
    mine["cache"] = {"max_age": 60}
    links = dict(data["routes"][5], name="links", match="/links/{path:.+}", delivery="redirect")
    data["routes"] += [mine, links]
    key = ("user-files", f"users/alice/{ODD_NAME}")
    fake = FakeStorage(objects={PHOTO: BODY, key: b"odd"})
    client = await proxy(data, storage=None if path == "/links/" else fake)
    from urllib.parse import quote

    target = path + quote(ODD_NAME)
    for _ in range(2):  # the second: from the object cache on /cached-me/
        raw = await exchange(client, _ask(target, "Connection: close"))
        head = raw.partition(b"\r\n\r\n")[0]
        assert head.isascii(), head
        _, headers, body = parse(raw)
        if path == "/links/":
            assert "%E6%97%A5" in headers["location"] and " " not in headers["location"]
        else:
            assert body == b"odd"
            assert headers["content-disposition"] == (
                "attachment; filename=\"u__x_.bin\"; filename*=UTF-8''"
                "%E6%97%A5%E6%9C%AC%20%C3%BC%3B%22x%22.bin"
            )


@pytest.mark.parametrize("path", ["/me/a%0D%0ASet-Cookie:%20x=1", "/me/a%0ASet-Cookie:x"])
async def test_cr_lf_in_a_key_is_refused_before_any_header(proxy, path: str) -> None:
    client = await proxy(config_dict(), storage=FakeStorage())
    raw = await exchange(client, _ask(path, "Connection: close"))
    status_line, headers, _ = parse(raw)
    assert status_line.startswith("HTTP/1.1 400 ")
    assert "set-cookie" not in headers


class _HostileMeta(FakeStorage):
    """S3 (or whatever answers as S3) sends field values with line breaks and odd bytes."""

    def _meta(self, bucket: str, key: str, mid_stream: bool = False) -> ObjectMeta:
        meta = super()._meta(bucket, key, mid_stream)
        return ObjectMeta(
            content_length=meta.content_length,
            content_type="text/plain\r\nSet-Cookie: a=1",
            etag='"x"\r\nSet-Cookie: b=1',
            last_modified="Mon, 01 Jan 2024 00:00:00 GMT\nX-Injected: 1",
            content_encoding="gzip\x00",
            content_language="日本",
        )


@pytest.mark.parametrize("path", PATHS[:2])
async def test_hostile_metadata_never_injects_a_field(proxy, path: str) -> None:
    client = await proxy(_config(), storage=_HostileMeta(objects={PHOTO: BODY}))
    for method in ("GET", "GET", "HEAD"):
        raw = await exchange(client, _ask(path, "Connection: close", method=method))
        head = raw.partition(b"\r\n\r\n")[0]
        assert head.isascii()
        status_line, headers, _ = parse(raw)
        assert status_line == "HTTP/1.1 200 OK"
        assert not {"set-cookie", "x-injected", "etag", "last-modified"} & set(headers)
        assert not {"content-encoding", "content-language"} & set(headers)
        assert headers["content-type"] == "application/octet-stream"


# D. Refusals (the Gateway's JSON errors) are written the same way.


async def test_refusals_keep_their_fields_framing_and_json(proxy) -> None:
    client = await _start(proxy)
    anonymous = b"GET /stream/photos/42 HTTP/1.1\r\nHost: p\r\n\r\n"
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(anonymous * 2 + anonymous.replace(b"GET", b"HEAD") + anonymous)
        answers = []
        for method in ("GET", "GET", "HEAD", "GET"):
            if method == "HEAD":
                async with asyncio.timeout(5):
                    answers.append(parse(await reader.readuntil(b"\r\n\r\n")))
            else:
                answers.append(await read_answer(reader))
        for status_line, headers, _body in answers:
            assert status_line == "HTTP/1.1 401 Unauthorized"
            assert headers["www-authenticate"].startswith("Bearer")
            assert headers["content-type"] == "application/json"
            assert headers["cache-control"] == "no-store"
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["content-length"] == answers[0][1]["content-length"]
            assert "server" not in headers and "connection" not in headers
        assert set(json.loads(answers[0][2])) == {"error"}
        assert answers[2][2] == b""  # the HEAD's
        client.server.runner.server.closing = True
        writer.write(anonymous)
        assert (await read_answer(reader))[1]["connection"] == "close"
    finally:
        writer.close()
    status_line, headers, body = parse(await exchange(client, anonymous.replace(b"1.1", b"1.0")))
    assert (status_line, headers["connection"]) == ("HTTP/1.1 401 Unauthorized", "close")
    assert set(json.loads(body)) == {"error"}


def test_a_refusals_head_is_kept_and_a_field_it_refuses_is_answered_as_before() -> None:
    from aiohttp import web

    from proxy.app import _error_response

    first = _error_response(429, "slow down", {"Retry-After": "1"})
    again = _error_response(429, "slow down", {"Retry-After": "1"})
    assert isinstance(first, WireResponse) and isinstance(again, WireResponse)
    assert first._head is again._head
    assert _error_response(429, "slow down", {"Retry-After": "2"})._head is not first._head  # type: ignore[attr-defined]
    odd = _error_response(302, "sign in", {"Location": "/login\r\nSet-Cookie: a=1"})
    assert not isinstance(odd, WireResponse) and isinstance(odd, web.Response)


@pytest.mark.parametrize(
    "use",
    [
        lambda r: r.set_cookie("a", "1"),
        lambda r: r.del_cookie("a"),
        lambda r: r.cookies,
        lambda r: r.enable_compression(),
        lambda r: r.enable_chunked_encoding(),
    ],
)
def test_what_it_would_not_send_is_refused_at_once(use: Any) -> None:
    with pytest.raises(RuntimeError):
        use(WireResponse(200, WireHead({}), 0))


@pytest.mark.parametrize("path", PATHS[:2])
async def test_a_304_repeats_the_cache_fields_and_frames_like_the_others(proxy, path: str) -> None:
    client = await _start(proxy)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    ask = _ask(path, 'If-None-Match: "fake"')
    try:
        writer.write(ask + _ask(path, 'If-None-Match: "fake"', method="HEAD") + ask)
        for _ in range(3):
            async with asyncio.timeout(5):
                status_line, headers, _ = parse(await reader.readuntil(b"\r\n\r\n"))
            assert status_line == "HTTP/1.1 304 Not Modified"
            assert headers["etag"] == '"fake"'
            assert headers["cache-control"] == "private, no-cache"
            assert headers["vary"] == "Authorization, Cookie"
            assert "content-length" not in headers and "connection" not in headers
            assert len(headers["x-request-id"]) == 16
            assert ("age" in headers) is path.startswith("/cached")  # from the object cache
    finally:
        writer.close()
    raw = await exchange(client, _ask(path, 'If-None-Match: "fake"', version="1.0"))
    status_line, headers, body = parse(raw)
    assert (status_line, headers["connection"], body) == ("HTTP/1.1 304 Not Modified", "close", b"")
