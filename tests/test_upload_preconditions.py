"""Conditional PUTs (RFC 9110 13.2.2) over real sockets, moto S3 behind: the client's
If-Match, If-None-Match and If-Unmodified-Since are judged before any byte is stored, a write
landing in between is refused by S3's own conditional write rather than lost, and every
refusal leaves the object as it was. Redirect uploads sign what S3 can check."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from .conftest import S3Objects
from .faulty_s3 import FaultyS3
from .sigv4 import verify_presigned_url
from .test_upload_redirect import REDIRECT_ROUTE, alice
from .test_uploads import (
    ALICE,
    BUCKET,
    PART,
    assert_nothing_left,
    chunked,
    fresh,
    pattern,
    upload_config,
)

pytestmark = pytest.mark.both_engines

PNG = {**ALICE, "Content-Type": "image/png"}
LONG_AGO = "Mon, 01 Jan 1990 00:00:00 GMT"
SOON = "Fri, 01 Jan 2100 00:00:00 GMT"


@pytest.fixture
def s3_client(s3: S3Objects) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")


@pytest.fixture
async def faulty(s3: S3Objects) -> AsyncIterator[FaultyS3]:
    server = FaultyS3(upstream=s3.endpoint)
    await server.start()
    yield server
    await server.close()


def existing(s3_client: Any, body: bytes = b"original") -> tuple[str, str, str]:
    """A fresh path on the overwriting route, its S3 key, and the ETag of what is there."""
    path = fresh("p.png")
    key = f"uploads/alice/{path}"
    etag = s3_client.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"]
    return path, key, etag


def stored(s3_client: Any, key: str) -> bytes:
    return bytes(s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def with_lines(base: dict[str, str], *pairs: tuple[str, str]) -> CIMultiDict[str]:
    headers = CIMultiDict(base)
    for name, value in pairs:
        headers.add(name, value)
    return headers


# 1. Refused before anything is stored: 412, the object as it was, no upload left behind.

REFUSED_WHEN_PRESENT = [
    ("if-match-other", lambda etag: [("If-Match", '"nope"')]),
    ("if-match-weak", lambda etag: [("If-Match", f"W/{etag}")]),
    ("if-match-malformed", lambda etag: [("If-Match", f"x{etag}")]),
    ("if-none-match-star", lambda etag: [("If-None-Match", "*")]),
    ("if-none-match-etag", lambda etag: [("If-None-Match", etag)]),
    ("if-none-match-weak", lambda etag: [("If-None-Match", f"W/{etag}")]),
    ("if-none-match-two-lines", lambda etag: [("If-None-Match", '"x"'), ("If-None-Match", etag)]),
    ("if-none-match-malformed", lambda etag: [("If-None-Match", f"x{etag}")]),
    ("if-unmodified-since-past", lambda etag: [("If-Unmodified-Since", LONG_AGO)]),
]


@pytest.mark.parametrize("multipart", [False, True], ids=["one-put", "multipart"])
@pytest.mark.parametrize(
    ("name", "build"), REFUSED_WHEN_PRESENT, ids=[c[0] for c in REFUSED_WHEN_PRESENT]
)
async def test_a_failed_precondition_on_an_existing_object_is_412_and_it_is_kept(
    proxy, s3: S3Objects, s3_client: Any, name: str, build: Any, multipart: bool
) -> None:
    client = await proxy(upload_config(s3.endpoint))
    path, key, etag = existing(s3_client)
    data = chunked(pattern(PART + 1)) if multipart else b"new"
    response = await client.put(f"/upw/{path}", data=data, headers=with_lines(PNG, *build(etag)))
    assert response.status == 412, name
    assert await response.json() == {"error": "precondition failed"}
    assert response.headers["Cache-Control"] == "no-store"
    assert stored(s3_client, key) == b"original"
    assert s3_client.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []) == []


@pytest.mark.parametrize("if_match", ["*", '"x"', '"x", "y"'])
async def test_if_match_on_a_missing_key_is_412_and_creates_nothing(
    proxy, s3: S3Objects, s3_client: Any, if_match: str
) -> None:
    client = await proxy(upload_config(s3.endpoint))
    path = fresh("m.png")
    response = await client.put(f"/upw/{path}", data=b"new", headers={**PNG, "If-Match": if_match})
    assert response.status == 412
    assert_nothing_left(s3_client, f"uploads/alice/{path}")


async def test_a_412_comes_before_100_continue(proxy, s3: S3Objects, s3_client: Any) -> None:
    client = await proxy(upload_config(s3.endpoint))
    path, key, _ = existing(s3_client)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = (
        f"PUT /upw/{path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
        f"Expect: 100-continue\r\nContent-Type: image/png\r\nContent-Length: 5\r\n"
        f"If-None-Match: *\r\nAuthorization: {ALICE['Authorization']}\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    async with asyncio.timeout(5):
        first = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert first.startswith(b"HTTP/1.1 412 ")  # the body was never asked for
    assert stored(s3_client, key) == b"original"


async def test_a_precondition_outranks_the_routes_overwrite_rule(
    proxy, s3: S3Objects, s3_client: Any
) -> None:
    """On an overwrite: false route the client's own failed precondition is its 412; with
    none, or one that holds, the route's refusal is 409."""
    client = await proxy(upload_config(s3.endpoint))
    path = fresh("o.txt")
    key = f"uploads/alice/{path}"
    etag = s3_client.put_object(Bucket=BUCKET, Key=key, Body=b"kept")["ETag"]
    text = {**ALICE, "Content-Type": "text/plain"}
    refused = await client.put(f"/up/{path}", data=b"x", headers={**text, "If-None-Match": "*"})
    assert refused.status == 412
    matched = await client.put(f"/up/{path}", data=b"x", headers={**text, "If-Match": etag})
    assert matched.status == 409
    assert stored(s3_client, key) == b"kept"


# 1b. Preconditions that hold: the upload is stored, 201 when it created the object (with
# Location), 200 when it replaced one.

HOLDING = [
    ("if-match-etag", True, lambda etag: {"If-Match": etag}, 200),
    ("if-match-list", True, lambda etag: {"If-Match": f'"x", {etag}'}, 200),
    ("if-match-star", True, lambda etag: {"If-Match": "*"}, 200),
    ("if-none-match-other", True, lambda etag: {"If-None-Match": '"x"'}, 200),
    ("if-unmodified-since-soon", True, lambda etag: {"If-Unmodified-Since": SOON}, 200),
    ("if-none-match-star-missing", False, lambda etag: {"If-None-Match": "*"}, 201),
    ("if-unmodified-since-missing", False, lambda etag: {"If-Unmodified-Since": LONG_AGO}, 201),
    ("if-modified-since-ignored", True, lambda etag: {"If-Modified-Since": SOON}, 200),
]


@pytest.mark.parametrize("multipart", [False, True], ids=["one-put", "multipart"])
@pytest.mark.parametrize(
    ("name", "present", "build", "status"), HOLDING, ids=[c[0] for c in HOLDING]
)
async def test_a_holding_precondition_stores_the_upload(
    proxy,
    s3: S3Objects,
    s3_client: Any,
    name: str,
    present: bool,
    build: Any,
    status: int,
    multipart: bool,
) -> None:
    client = await proxy(upload_config(s3.endpoint))
    if present:
        path, key, etag = existing(s3_client)
    else:
        path, etag = fresh("h.png"), '"none"'
        key = f"uploads/alice/{path}"
    data = pattern(PART + 1) if multipart else b"new"
    response = await client.put(
        f"/upw/{path}", data=chunked(data) if multipart else data, headers={**PNG, **build(etag)}
    )
    assert response.status == status, name
    assert stored(s3_client, key) == data
    assert (response.headers.get("Location") == f"/upw/{path}") is (status == 201)


# 2. Races: whatever the proxy judged is pinned on the write, so S3 refuses a write that
# would lose another one made in between.


def racing_body(action: Any) -> Any:
    """A body of less than a part (one PutObject) that does `action` halfway through. Sent
    with `expect100=True`, so that the proxy has looked at the key before it starts."""

    async def body() -> AsyncIterator[bytes]:
        yield b"mine-"
        await asyncio.to_thread(action)
        yield b"after"

    return body()


def racing_parts(action: Any) -> Any:
    """A body of two parts (a multipart upload) that does `action` after the first."""

    async def body() -> AsyncIterator[bytes]:
        yield pattern(PART)
        await asyncio.to_thread(action)
        yield pattern(PART)

    return body()


async def test_if_match_loses_no_update_made_during_the_upload(
    proxy, s3: S3Objects, s3_client: Any
) -> None:
    """The client read version 1 and guards its edit with its ETag; someone else writes
    version 2 while the edit is on its way: S3 refuses the edit (If-Match on PutObject)."""
    client = await proxy(upload_config(s3.endpoint))
    path, key, etag = existing(s3_client, b"version 1")

    def someone_else() -> None:
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=b"version 2")

    response = await client.put(
        f"/upw/{path}",
        data=racing_body(someone_else),
        headers={**PNG, "If-Match": etag},
        expect100=True,
    )
    assert response.status == 412
    assert stored(s3_client, key) == b"version 2"


async def test_if_unmodified_since_is_pinned_too(proxy, s3: S3Objects, s3_client: Any) -> None:
    client = await proxy(upload_config(s3.endpoint))
    path, key, _ = existing(s3_client, b"version 1")

    def someone_else() -> None:
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=b"version 2")

    response = await client.put(
        f"/upw/{path}",
        data=racing_body(someone_else),
        headers={**PNG, "If-Unmodified-Since": SOON},
        expect100=True,
    )
    assert response.status == 412
    assert stored(s3_client, key) == b"version 2"


async def test_an_object_deleted_during_an_if_match_upload_is_not_recreated(
    proxy, s3: S3Objects, s3_client: Any
) -> None:
    client = await proxy(upload_config(s3.endpoint))
    path, key, etag = existing(s3_client)

    def someone_deletes() -> None:
        s3_client.delete_object(Bucket=BUCKET, Key=key)

    response = await client.put(
        f"/upw/{path}",
        data=racing_body(someone_deletes),
        headers={**PNG, "If-Match": etag},
        expect100=True,
    )
    assert response.status == 412
    assert_nothing_left(s3_client, key)


async def test_if_none_match_star_on_a_multipart_upload_loses_no_creation(
    proxy, s3: S3Objects, s3_client: Any
) -> None:
    """On a route that does overwrite, the client's own If-None-Match: * still guards the
    key: a creation during the upload wins, the upload is aborted, and the answer is 412."""
    client = await proxy(upload_config(s3.endpoint))
    path = fresh("n.png")
    key = f"uploads/alice/{path}"

    def someone_creates() -> None:
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=b"first")

    response = await client.put(
        f"/upw/{path}",
        data=racing_parts(someone_creates),
        headers={**PNG, "If-None-Match": "*"},
        expect100=True,
    )
    assert response.status == 412
    assert stored(s3_client, key) == b"first"
    assert s3_client.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []) == []


def _faulty_config(endpoint: str) -> dict[str, Any]:
    data = upload_config(endpoint)
    data["s3"]["max_attempts"] = 1
    return data


@pytest.mark.parametrize(
    ("answer", "route", "headers", "status"),
    [
        ((412, "PreconditionFailed"), "upw", {"If-Match": "ETAG"}, 412),
        ((409, "ConditionalRequestConflict"), "upw", {"If-Match": "ETAG"}, 412),
        ((412, "PreconditionFailed"), "up", {}, 409),  # the route's rule, not the client's
    ],
)
async def test_s3_refusing_a_pinned_multipart_completion(
    proxy,
    s3: S3Objects,
    s3_client: Any,
    faulty: FaultyS3,
    answer: tuple[int, str],
    route: str,
    headers: dict[str, str],
    status: int,
) -> None:
    """moto checks no If-Match on CompleteMultipartUpload: a recording S3 in front of it shows
    what is sent, and answers the completion as S3 does when another write came first."""
    client = await proxy(_faulty_config(faulty.url))
    if route == "upw":
        path, key, etag = existing(s3_client)
        expected = {"if-match": etag}
    else:
        path = fresh("c.png")
        key, etag = f"uploads/alice/{path}", ""
        expected = {"if-none-match": "*"}
    faulty.mode, faulty.answer, faulty.answer_only = "answer", answer, "POST /user-files/"
    faulty.answer_only += f"{key}?uploadId="
    sent = {name: value.replace("ETAG", etag) for name, value in headers.items()}
    response = await client.put(
        f"/{route}/{path}", data=chunked(pattern(PART + 1)), headers={**PNG, **sent}
    )
    assert response.status == status
    # The POSTs: CreateMultipartUpload, then CompleteMultipartUpload.
    create, completion = [
        asked for asked, seen in zip(faulty.headers, faulty.paths, strict=True) if "POST " in seen
    ]
    assert "if-match" not in create
    assert "if-none-match" not in create
    assert {name: completion.get(name) for name in expected} == expected
    assert s3_client.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []) == []
    if route == "upw":
        assert stored(s3_client, key) == b"original"


async def test_an_unconditional_upload_pins_nothing(
    proxy, s3: S3Objects, s3_client: Any, faulty: FaultyS3
) -> None:
    """No precondition, a route that overwrites: the last write wins, as a PUT does."""
    client = await proxy(_faulty_config(faulty.url))
    path, key, _ = existing(s3_client)
    response = await client.put(f"/upw/{path}", data=b"new", headers=PNG)
    assert response.status == 200
    (put,) = [h for h, p in zip(faulty.headers, faulty.paths, strict=True) if p.startswith("PUT")]
    assert "if-match" not in put
    assert "if-none-match" not in put
    assert stored(s3_client, key) == b"new"


# 3. Redirect uploads: judged at the proxy, and the client's own S3-checkable precondition
# signed into the presigned PUT.

OVERWRITING_REDIRECT = {
    **copy.deepcopy(REDIRECT_ROUTE),
    "name": "direct-overwrites",
    "match": "/directw/{path:.+}",
    "key": "direct/{claims.sub}/{path}",
    "methods": ["PUT"],
}
OVERWRITING_REDIRECT["upload"] = {**REDIRECT_ROUTE["upload"], "overwrite": True}


def redirect_config(endpoint: str) -> dict[str, Any]:
    data = upload_config(endpoint)
    data["routes"] = [*copy.deepcopy([REDIRECT_ROUTE, OVERWRITING_REDIRECT]), *data["routes"]]
    return data


async def _presigned(client: Any, path: str, body: bytes, headers: dict[str, str]) -> str:
    response = await client.put(path, data=body, headers=headers, allow_redirects=False)
    assert response.status == 307, await response.text()
    return str(response.headers["Location"])


def _signed(url: str, body: bytes, extra: dict[str, str]) -> dict[str, str]:
    return verify_presigned_url(
        url,
        secret_key="testing",
        method="PUT",
        now=datetime.now(UTC),
        headers={"content-type": "text/plain", "content-length": str(len(body)), **extra},
    )


async def _follow(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.put(url, data=body, headers={"Content-Type": "text/plain", **headers}) as direct,
    ):
        await direct.read()
        return direct.status


async def test_redirect_if_none_match_star_is_signed_and_s3_keeps_the_race(
    proxy, s3: S3Objects, s3_client: Any
) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    path = fresh("r.txt")
    key = f"direct/alice/{path}"
    body = b"mine"
    url = await _presigned(
        client,
        f"/directw/{path}",
        body,
        {**alice(), "Content-Type": "text/plain", "If-None-Match": "*"},
    )
    params = _signed(url, body, {"if-none-match": "*"})
    assert params["X-Amz-SignedHeaders"] == "content-length;content-type;host;if-none-match"
    with pytest.raises(KeyError):  # the URL signs the header: no good without it
        _signed(url, body, {})
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=b"first")  # between the 307 and the PUT
    assert await _follow(url, body, {"If-None-Match": "*"}) == 412
    assert stored(s3_client, key) == b"first"
    # Asked again now, the proxy sees the object and refuses before signing.
    again = await client.put(
        f"/directw/{path}",
        data=body,
        headers={**alice(), "Content-Type": "text/plain", "If-None-Match": "*"},
        allow_redirects=False,
    )
    assert again.status == 412


async def test_redirect_if_match_is_signed_and_s3_keeps_the_race(
    proxy, s3: S3Objects, s3_client: Any
) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    path = fresh("m.txt")
    key = f"direct/alice/{path}"
    etag = s3_client.put_object(Bucket=BUCKET, Key=key, Body=b"version 1")["ETag"]
    body = b"edit"
    headers = {**alice(), "Content-Type": "text/plain", "If-Match": etag}
    url = await _presigned(client, f"/directw/{path}", body, headers)
    params = _signed(url, body, {"if-match": etag})
    assert params["X-Amz-SignedHeaders"] == "content-length;content-type;host;if-match"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=b"version 2")
    assert await _follow(url, body, {"If-Match": etag}) == 412
    assert stored(s3_client, key) == b"version 2"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"If-Match": '"nope"'}, 412),
        ({"If-None-Match": "*"}, 412),
        ({"If-Unmodified-Since": LONG_AGO}, 412),
        ({"If-Unmodified-Since": SOON}, 307),  # holds now; not pinnable, so not signed
        ({"If-Match": '"x", ETAG'}, 307),  # a list: S3 checks one tag, so not signed
        ({"If-Match": "*"}, 307),
    ],
)
async def test_redirect_preconditions_are_judged_before_signing(
    proxy, s3: S3Objects, s3_client: Any, headers: dict[str, str], status: int
) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    path = fresh("j.txt")
    etag = s3_client.put_object(Bucket=BUCKET, Key=f"direct/alice/{path}", Body=b"there")["ETag"]
    sent = {name: value.replace("ETAG", etag) for name, value in headers.items()}
    response = await client.put(
        f"/directw/{path}",
        data=b"x",
        headers={**alice(), "Content-Type": "text/plain", **sent},
        allow_redirects=False,
    )
    assert response.status == status
    if status == 307:
        assert _signed(response.headers["Location"], b"x", {})["X-Amz-SignedHeaders"] == (
            "content-length;content-type;host"
        )
