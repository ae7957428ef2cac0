"""Preconditions, If-Range and ranges over real sockets against moto, on every delivery path.

Each case runs on the streamed route (S3 asked for the bytes), on a route with the memory
cache, and as HEAD where HEAD applies: one implementation (conditional.py) must answer alike.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import pytest
from multidict import CIMultiDict

from .conftest import S3Objects, bearer, config_dict, make_token
from .fakes import FakeStorage
from .test_upstream import ScriptedServer, response_head

pytestmark = pytest.mark.both_engines

ALICE = bearer(make_token("alice"))
STREAMED = "/stream/photos/42"
CACHED = "/cached/photos/42"
PATHS = [STREAMED, CACHED]


def _config(endpoint: str) -> dict[str, Any]:
    data = config_dict(endpoint)
    cached = copy.deepcopy(data["routes"][1])
    cached.update(name="photo-cached", match="/cached/photos/{employee_id}", cache={"max_age": 60})
    data["routes"].append(cached)
    return data


async def _start(proxy: Any, s3: S3Objects) -> tuple[Any, str, str]:
    """The proxy, and the photo's ETag and Last-Modified as a plain GET reports them."""
    client = await proxy(_config(s3.endpoint))
    first = await client.get(STREAMED, headers=ALICE)
    assert first.status == 200
    return client, first.headers["ETag"], first.headers["Last-Modified"]


def _rfc850(value: str) -> str:
    return parsedate_to_datetime(value).strftime("%A, %d-%b-%y %H:%M:%S GMT")


def _asctime(value: str) -> str:
    moment = parsedate_to_datetime(value)
    return f"{moment:%a %b} {moment.day:2d} {moment:%H:%M:%S %Y}"


def _shifted(value: str, seconds: int) -> str:
    moment: datetime = parsedate_to_datetime(value) + timedelta(seconds=seconds)
    return format_datetime(moment, usegmt=True)


# Each case: (name, headers built from the etag and last-modified, expected status)
CASES = [
    ("inm-exact", lambda e, m: {"If-None-Match": e}, 304),
    ("inm-weak", lambda e, m: {"If-None-Match": f"W/{e}"}, 304),
    ("inm-list", lambda e, m: {"If-None-Match": f'"x", W/"y", {e}'}, 304),
    ("inm-star", lambda e, m: {"If-None-Match": "*"}, 304),
    ("inm-other", lambda e, m: {"If-None-Match": '"x"'}, 200),
    ("im-exact", lambda e, m: {"If-Match": e}, 200),
    ("im-star", lambda e, m: {"If-Match": "*"}, 200),
    ("im-list", lambda e, m: {"If-Match": f'"x", {e}'}, 200),
    ("im-weak", lambda e, m: {"If-Match": f"W/{e}"}, 412),
    ("im-other", lambda e, m: {"If-Match": '"x"'}, 412),
    ("ius-earlier", lambda e, m: {"If-Unmodified-Since": _shifted(m, -60)}, 412),
    ("ius-same", lambda e, m: {"If-Unmodified-Since": m}, 200),
    ("ius-asctime", lambda e, m: {"If-Unmodified-Since": _asctime(_shifted(m, -60))}, 412),
    ("ims-same", lambda e, m: {"If-Modified-Since": m}, 304),
    ("ims-rfc850", lambda e, m: {"If-Modified-Since": _rfc850(m)}, 304),
    ("ims-asctime", lambda e, m: {"If-Modified-Since": _asctime(m)}, 304),
    ("ims-earlier", lambda e, m: {"If-Modified-Since": _shifted(m, -60)}, 200),
    ("ims-invalid", lambda e, m: {"If-Modified-Since": "yesterday-ish"}, 200),
    ("412-before-304", lambda e, m: {"If-Match": '"x"', "If-None-Match": e}, 412),
    ("inm-outranks-ims", lambda e, m: {"If-None-Match": '"x"', "If-Modified-Since": m}, 200),
    ("im-outranks-ius", lambda e, m: {"If-Match": e, "If-Unmodified-Since": _shifted(m, -60)}, 200),
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("name", "build", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_preconditions(
    proxy, s3: S3Objects, path: str, method: str, name: str, build: Any, expected: int
) -> None:
    client, etag, modified = await _start(proxy, s3)
    response = await client.request(method, path, headers={**ALICE, **build(etag, modified)})
    assert response.status == expected, name
    body = await response.read()
    if expected == 304:
        assert body == b""
        assert response.headers["ETag"] == etag
        assert response.headers["Last-Modified"] == modified
        assert response.headers["Cache-Control"] == "private, no-cache"
        assert "Content-Type" not in response.headers
    elif expected == 412:
        assert response.headers["Content-Type"].startswith("application/json")
        assert body == (b"" if method == "HEAD" else b'{"error": "precondition failed"}')
    else:
        assert body == (b"" if method == "HEAD" else s3.photo)
        assert response.headers["ETag"] == etag


# Fields on several lines are one list (RFC 9110 5.3); a date sent twice is no date; a tag
# list that does not parse matches nothing (If-Match then fails closed).
LINES_CASES = [
    ("inm-two-lines", lambda e, m: [("If-None-Match", '"x"'), ("If-None-Match", e)], 304),
    ("im-two-lines", lambda e, m: [("If-Match", '"x"'), ("If-Match", e)], 200),
    ("im-two-lines-none", lambda e, m: [("If-Match", '"x"'), ("If-Match", '"y"')], 412),
    ("ims-twice", lambda e, m: [("If-Modified-Since", m), ("If-Modified-Since", m)], 200),
    (
        "ius-twice",
        lambda e, m: [("If-Unmodified-Since", _shifted(m, -60))] * 2,
        200,
    ),
    ("im-malformed", lambda e, m: [("If-Match", f"x{e}")], 412),
    ("im-trailing-junk", lambda e, m: [("If-Match", f"{e}x")], 412),
    ("inm-malformed", lambda e, m: [("If-None-Match", f"x{e}")], 200),
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("name", "build", "expected"), LINES_CASES, ids=[c[0] for c in LINES_CASES]
)
async def test_fields_on_several_lines_and_malformed_lists(
    proxy, s3: S3Objects, path: str, method: str, name: str, build: Any, expected: int
) -> None:
    client, etag, modified = await _start(proxy, s3)
    headers = CIMultiDict(ALICE)
    for field, value in build(etag, modified):
        headers.add(field, value)
    response = await client.request(method, path, headers=headers)
    assert response.status == expected, name
    await response.read()


# If-Range: the Range holds only when the validator matches strongly.
IF_RANGE_CASES = [
    ("etag", lambda e, m: e, 206),
    ("date", lambda e, m: m, 206),
    ("date-rfc850", lambda e, m: _rfc850(m), 206),
    ("weak-etag", lambda e, m: f"W/{e}", 200),
    ("other-etag", lambda e, m: '"stale"', 200),
    ("later-date", lambda e, m: _shifted(m, 60), 200),
    ("not-a-date", lambda e, m: "soon", 200),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("name", "build", "expected"), IF_RANGE_CASES, ids=[c[0] for c in IF_RANGE_CASES]
)
async def test_if_range_resumes_only_the_same_bytes(
    proxy, s3: S3Objects, path: str, name: str, build: Any, expected: int
) -> None:
    client, etag, modified = await _start(proxy, s3)
    headers = {**ALICE, "Range": "bytes=100-199", "If-Range": build(etag, modified)}
    response = await client.get(path, headers=headers)
    assert response.status == expected, name
    body = await response.read()
    assert response.headers["ETag"] == etag  # the whole object's validator, also on a 206
    if expected == 206:
        assert body == s3.photo[100:200]
        assert response.headers["Content-Range"] == f"bytes 100-199/{len(s3.photo)}"
    else:
        assert body == s3.photo
        assert "Content-Range" not in response.headers


@pytest.mark.parametrize("path", PATHS)
async def test_range_order_preconditions_then_if_range_then_416(
    proxy, s3: S3Objects, path: str
) -> None:
    client, etag, _ = await _start(proxy, s3)
    past = f"bytes={len(s3.photo) + 10}-"
    cases = [
        ({"Range": "bytes=0-9", "If-None-Match": etag}, 304),
        ({"Range": past, "If-Match": '"x"'}, 412),  # S3 would say 416; 412 comes first
        ({"Range": past, "If-None-Match": etag}, 304),
        ({"Range": past, "If-Range": '"stale"'}, 200),  # a stale If-Range drops the Range
        ({"Range": past, "If-Range": etag}, 416),
        ({"Range": past}, 416),
    ]
    for headers, expected in cases:
        response = await client.get(path, headers={**ALICE, **headers})
        assert response.status == expected, headers
        if expected == 416:
            assert response.headers["Content-Range"] == f"bytes */{len(s3.photo)}"
        if expected == 200:
            assert await response.read() == s3.photo


@pytest.mark.parametrize("path", PATHS)
async def test_another_range_unit_is_ignored(proxy, s3: S3Objects, path: str) -> None:
    client, _, _ = await _start(proxy, s3)
    response = await client.get(path, headers={**ALICE, "Range": "items=0-1"})
    assert response.status == 200
    assert await response.read() == s3.photo


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("header", ["bytes=5-2", "bytes=-0", "bytes=abc", "bytes=0-1,"])
async def test_malformed_byte_ranges_are_416_as_nginx_answers(
    proxy, s3: S3Objects, path: str, header: str
) -> None:
    client, _, _ = await _start(proxy, s3)
    response = await client.get(path, headers={**ALICE, "Range": header})
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(s3.photo)}"
    # a precondition decides first, and a stale If-Range asks for the whole object
    failed = await client.get(path, headers={**ALICE, "Range": header, "If-Match": '"other"'})
    assert failed.status == 412
    stale = await client.get(path, headers={**ALICE, "Range": header, "If-Range": '"other"'})
    assert (stale.status, await stale.read()) == (200, s3.photo)


@pytest.mark.parametrize("path", PATHS)
async def test_head_ignores_range(proxy, s3: S3Objects, path: str) -> None:
    client, etag, _ = await _start(proxy, s3)
    response = await client.head(path, headers={**ALICE, "Range": "bytes=0-9", "If-Range": etag})
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(s3.photo))


async def test_several_ranges_from_memory_are_multipart_byteranges(proxy, s3: S3Objects) -> None:
    client, _, _ = await _start(proxy, s3)
    size = len(s3.photo)
    response = await client.get(CACHED, headers={**ALICE, "Range": "bytes=0-1,5-6,-2"})
    assert response.status == 206
    kind, _, boundary = response.headers["Content-Type"].partition("; boundary=")
    assert kind == "multipart/byteranges"
    expected = (
        b"".join(
            f"\r\n--{boundary}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Range: bytes {first}-{last}/{size}\r\n\r\n".encode()
            + s3.photo[first : last + 1]
            for first, last in ((0, 1), (5, 6), (size - 2, size - 1))
        )
        + f"\r\n--{boundary}--\r\n".encode()
    )
    assert await response.read() == expected
    assert response.headers["Content-Length"] == str(len(expected))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("header", ["bytes=20000-,30000-", "bytes=20000-20001, 30000-30009"])
async def test_several_ranges_none_satisfiable_are_416_on_every_route(
    proxy, s3: S3Objects, path: str, header: str
) -> None:
    """The streamed and the cached route answer several ranges alike when none can be
    served (the photo is 10 KiB): 416 with the size."""
    client, _, _ = await _start(proxy, s3)
    response = await client.get(path, headers={**ALICE, "Range": header})
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(s3.photo)}"
    # A stale If-Range asks for the whole object instead, on both.
    stale = await client.get(path, headers={**ALICE, "Range": header, "If-Range": '"old"'})
    assert stale.status == 200
    assert await stale.read() == s3.photo


async def test_several_ranges_streamed_get_the_whole_object(proxy, s3: S3Objects) -> None:
    client, _, _ = await _start(proxy, s3)
    response = await client.get(STREAMED, headers={**ALICE, "Range": "bytes=0-1,5-6"})
    assert response.status == 200
    assert await response.read() == s3.photo


async def test_overlapping_ranges_get_the_whole_object(proxy, s3: S3Objects) -> None:
    client, _, _ = await _start(proxy, s3)
    response = await client.get(CACHED, headers={**ALICE, "Range": "bytes=0-,0-,0-"})
    assert response.status == 200
    assert await response.read() == s3.photo


# The stream path's S3 traffic, counted behind the storage seam.

KEY = ("hr-private", "employees/42/photo.jpg")
BODY = bytes(range(256)) * 4


def _gets(fake: FakeStorage) -> int:
    return len([call for call in fake.calls if call[0] in ("get", "head")])


async def test_a_304_or_412_costs_one_head_and_no_body(proxy, s3: S3Objects) -> None:
    fake = FakeStorage(objects={KEY: BODY})
    client = await proxy(storage=fake)
    for headers, expected, calls in (
        ({}, 200, ["get"]),
        ({"If-None-Match": '"fake"'}, 304, ["head"]),
        ({"If-Match": '"x"'}, 412, ["head"]),
        ({"Range": "bytes=0-9", "If-Range": '"fake"'}, 206, ["get"]),
        ({"If-None-Match": '"old"'}, 200, ["head", "get"]),  # passes: then the object
    ):
        before = len(fake.calls)
        response = await client.get(STREAMED, headers={**ALICE, **headers})
        assert response.status == expected
        await response.read()
        assert [call[0] for call in fake.calls[before:]] == calls, headers
    assert fake.closed_streams == 3  # every GET's answer released


async def test_a_stale_if_range_costs_one_more_get_for_the_whole_object(
    proxy, s3: S3Objects
) -> None:
    fake = FakeStorage(objects={KEY: BODY})
    client = await proxy(storage=fake)
    response = await client.get(
        STREAMED, headers={**ALICE, "Range": "bytes=0-9", "If-Range": '"old"'}
    )
    assert response.status == 200
    assert await response.read() == BODY
    assert _gets(fake) == 2
    assert fake.closed_streams == 2


# What a 304 costs the S3 connection pool. moto closes every connection, so a scripted
# keep-alive S3 (test_upstream's) stands in and counts the connections the proxy opens.

MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize("size", [1024, 64 * 1024 * 1024])
async def test_a_304_keeps_the_s3_connection_whatever_the_size(proxy, size: int) -> None:
    # A HEAD answers the revalidation: no body crosses, so the connection is always reused.
    head = response_head(
        "200 OK", f"Content-Length: {size}", 'ETag: "e1"', f"Last-Modified: {MODIFIED}"
    )
    async with ScriptedServer([[head] for _ in range(3)], tls=None) as server:
        client = await proxy(config_dict(f"http://127.0.0.1:{server.origin.port}"))
        for _ in range(3):
            response = await client.get(STREAMED, headers={**ALICE, "If-None-Match": '"e1"'})
            assert response.status == 304
        assert len(server.requests) == 3
        assert server.accepted == 1
