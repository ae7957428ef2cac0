"""stream delivery over real HTTP: the proxy on a loopback socket, moto S3 behind it."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from .conftest import S3Objects, bearer, make_token

pytestmark = pytest.mark.both_engines

ADMIN = bearer(make_token("root", role="admin"))
ALICE = bearer(make_token("alice"))


async def test_streams_exact_bytes_with_s3_headers(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get("/stream/photos/42", headers=ALICE)
    assert response.status == 200
    assert await response.read() == s3.photo
    assert response.headers["Content-Length"] == str(len(s3.photo))
    assert response.headers["Content-Type"] == "image/jpeg"
    assert response.headers["ETag"].startswith('"')
    assert response.headers["Last-Modified"].endswith("GMT")
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Cache-Control"] == "private, no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_streams_a_large_object_in_chunks_with_its_length(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get("/admin/exports/big.bin", headers=ADMIN)
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(s3.big))
    assert "Transfer-Encoding" not in response.headers
    received = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        received += chunk
    assert bytes(received) == s3.big


async def test_head_sends_headers_without_body(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.head("/stream/photos/42", headers=ALICE)
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(s3.photo))
    assert response.headers["ETag"]
    assert await response.read() == b""


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, None),
        ("bytes=-50", None, 50),
        ("bytes=10-99999999", 10, None),
    ],
)
async def test_single_range_gives_206(proxy, s3: S3Objects, header, start, end) -> None:
    client = await proxy()
    response = await client.get("/stream/photos/42", headers={**ALICE, "Range": header})
    size = len(s3.photo)
    if start is None:
        expected, first, last = s3.photo[-end:], size - end, size - 1
    elif end is None:
        expected, first, last = s3.photo[start:], start, size - 1
    else:
        expected, first, last = s3.photo[start : end + 1], start, end
    assert response.status == 206
    assert await response.read() == expected
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    assert response.headers["Content-Length"] == str(len(expected))


async def test_unsatisfiable_range_is_416_with_size(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get(
        "/stream/photos/42", headers={**ALICE, "Range": f"bytes={len(s3.photo) + 10}-"}
    )
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(s3.photo)}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-9", "items=0-1"])
async def test_multi_or_other_unit_range_is_ignored(proxy, s3: S3Objects, header) -> None:
    client = await proxy()
    response = await client.get("/stream/photos/42", headers={**ALICE, "Range": header})
    assert response.status == 200
    assert await response.read() == s3.photo


async def test_if_range_present_serves_the_whole_object(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get(
        "/stream/photos/42", headers={**ALICE, "Range": "bytes=0-9", "If-Range": '"stale"'}
    )
    assert response.status == 200
    assert await response.read() == s3.photo


async def test_if_none_match_gives_304_with_validators(proxy) -> None:
    client = await proxy()
    first = await client.get("/stream/photos/42", headers=ALICE)
    etag = first.headers["ETag"]
    again = await client.get("/stream/photos/42", headers={**ALICE, "If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    assert await again.read() == b""
    changed = await client.get("/stream/photos/42", headers={**ALICE, "If-None-Match": '"x"'})
    assert changed.status == 200


async def test_if_modified_since_gives_304(proxy) -> None:
    client = await proxy()
    first = await client.get("/stream/photos/42", headers=ALICE)
    since = first.headers["Last-Modified"]
    again = await client.get("/stream/photos/42", headers={**ALICE, "If-Modified-Since": since})
    assert again.status == 304
    old = await client.get(
        "/stream/photos/42",
        headers={**ALICE, "If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"},
    )
    assert old.status == 200


async def test_invalid_if_modified_since_is_ignored(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get(
        "/stream/photos/42", headers={**ALICE, "If-Modified-Since": "yesterday-ish"}
    )
    assert response.status == 200
    assert await response.read() == s3.photo


async def test_if_match_mismatch_is_412(proxy) -> None:
    client = await proxy()
    response = await client.get("/stream/photos/42", headers={**ALICE, "If-Match": '"nope"'})
    assert response.status == 412


async def test_attachment_disposition_is_safe_for_odd_key_names(proxy, s3: S3Objects) -> None:
    client = await proxy()
    odd = s3.odd_name_key.removeprefix("exports/")
    response = await client.get("/admin/exports/" + quote(odd, safe=""), headers=ADMIN)
    assert response.status == 200
    assert await response.read() == s3.report
    assert response.headers["Content-Disposition"] == (
        'attachment; filename="we_ird_ name_x e.pdf"; '
        "filename*=UTF-8''we%22ird%3B%20name%3Dx%20%C3%A9.pdf"
    )

    response = await client.get("/admin/exports/q4.pdf", headers=ADMIN)
    assert response.status == 200
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"q4.pdf\"; filename*=UTF-8''q4.pdf"
    )


async def test_crlf_in_a_key_is_refused_before_it_can_reach_a_header(proxy) -> None:
    client = await proxy()
    response = await client.get("/admin/exports/a%0D%0ASet-Cookie:x=1.pdf", headers=ADMIN)
    assert response.status == 400
    assert "Set-Cookie" not in response.headers


async def test_key_scoped_to_the_callers_sub(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get("/me/notes.txt", headers=ALICE)
    assert response.status == 200
    assert await response.read() == s3.notes
    bob = await client.get("/me/notes.txt", headers=bearer(make_token("bob")))
    assert bob.status == 404


async def test_public_route_needs_no_token(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get("/public/42")
    assert response.status == 200
    assert await response.read() == s3.photo


async def test_owner_only_rule_references_path_param(proxy, s3: S3Objects) -> None:
    client = await proxy()
    mine = await client.get("/users/alice/albums/trip/1.jpg", headers=ALICE)
    assert mine.status == 200
    assert await mine.read() == s3.album
    theirs = await client.get(
        "/users/alice/albums/trip/1.jpg", headers=bearer(make_token("mallory"))
    )
    assert theirs.status == 403
