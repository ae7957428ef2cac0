"""Presigned multipart uploads over real sockets (issue 27): the sign API's `multipart`,
`resume`, `complete` and `abort` entries, each part sent with a real HTTP PUT to its
presigned URL on moto, and the object read back byte for byte. Attacks too: another user's
upload id, oversize and wrong types (refused before S3 is touched), floods."""

from __future__ import annotations

import io
import json
import logging
import random
from typing import Any

import aiohttp
import boto3
import pytest

from .conftest import S3Objects, bearer, config_dict, make_token
from .fakes import FakeStorage
from .test_uploads import BUCKET, fresh, multipart_uploads

pytestmark = pytest.mark.both_engines

MIB = 1024 * 1024
SIZE = 12 * MIB + 5  # three parts: 5 MiB, 5 MiB, 2 MiB + 5
MAX = 64 * MIB

ROUTE: dict[str, Any] = {
    "name": "big-files",
    "match": "/big/{path:.+}",
    "bucket": BUCKET,
    "key": "big/{claims.sub}/{path}",
    "delivery": "redirect",
    "access": "authenticated",
    "methods": ["GET", "POST"],
    "ttl": 600,
    "upload": {
        "max_bytes": MAX,
        "multipart": True,
        "part_size": 5 * MIB,
        "content_types": ["application/octet-stream", "video/*"],
    },
}


def _config(endpoint: str | None, max_paths: int = 1000, **route: Any) -> dict[str, Any]:
    data = config_dict(endpoint)
    data["routes"] = [{**ROUTE, **route}, *data["routes"]]
    data["sign_api"] = {"max_paths": max_paths}
    return data


def _user(sub: str) -> dict[str, str]:
    return bearer(make_token(sub, ttl=600))


ALICE, BOB = "alice", "bob"


async def _sign(client: Any, sub: str, kind: str, *entries: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.post("/_sign", json={kind: list(entries)}, headers=_user(sub))
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    answers: list[dict[str, Any]] = (await response.json())[kind]
    assert [answer["path"] for answer in answers] == [entry["path"] for entry in entries]
    return answers


def _body(size: int = SIZE) -> bytes:
    return random.Random(size).randbytes(size)


async def _put_part(session: aiohttp.ClientSession, url: str, body: bytes) -> str:
    headers = {"Content-Length": str(len(body))}
    async with session.put(url, data=io.BytesIO(body), headers=headers) as response:
        assert response.status == 200, await response.text()
        return response.headers["ETag"]


@pytest.fixture
def s3_client(s3: S3Objects) -> Any:
    return boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")


async def test_a_file_in_parts_resumed_after_a_drop_completed_and_read_back(
    proxy, s3: S3Objects, s3_client: Any
) -> None:
    client = await proxy(_config(s3.endpoint, max_paths=2))  # two part URLs per answer
    path = f"/big/{fresh('movie.bin')}"
    body = _body()
    (begun,) = await _sign(
        client,
        ALICE,
        "multipart",
        {"path": path, "content_type": "application/octet-stream", "size": SIZE},
    )
    assert set(begun) == {"path", "upload_id", "part_size", "parts", "expires_at"}
    assert begun["part_size"] == 5 * MIB
    assert [part["number"] for part in begun["parts"]] == [1, 2]
    async with aiohttp.ClientSession() as session:
        etag = await _put_part(session, begun["parts"][0]["url"], body[: 5 * MIB])
        # The connection drops; part 2's URL is lost. Later:
        resume = {"path": path, "upload_id": begun["upload_id"], "size": SIZE}
        (resumed,) = await _sign(client, ALICE, "resume", resume)
        assert resumed["uploaded"] == [{"number": 1, "size": 5 * MIB, "etag": etag}]
        assert [part["number"] for part in resumed["parts"]] == [2, 3]
        etags = [etag]
        for part in resumed["parts"]:
            start = (part["number"] - 1) * 5 * MIB
            etags.append(await _put_part(session, part["url"], body[start : start + 5 * MIB]))
    parts = [{"number": n, "etag": etag} for n, etag in enumerate(etags, start=1)]
    (done,) = await _sign(
        client, ALICE, "complete", {"path": path, "upload_id": begun["upload_id"], "parts": parts}
    )
    assert set(done) == {"path", "status", "etag"}
    assert done["status"] == 201
    key = f"big/alice/{path.removeprefix('/big/')}"
    assert s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    assert multipart_uploads(s3_client, key) == []
    # And through the route itself: a redirect to the object.
    got = await client.get(path, headers=_user(ALICE), allow_redirects=False)
    assert got.status == 302
    async with aiohttp.ClientSession() as session, session.get(got.headers["Location"]) as s3_got:
        assert await s3_got.read() == body


async def test_abort_leaves_no_upload_listed(proxy, s3: S3Objects, s3_client: Any) -> None:
    client = await proxy(_config(s3.endpoint))
    path = f"/big/{fresh()}"
    (begun,) = await _sign(
        client, ALICE, "multipart", {"path": path, "content_type": "video/mp4", "size": SIZE}
    )
    async with aiohttp.ClientSession() as session:
        await _put_part(session, begun["parts"][0]["url"], _body(5 * MIB))
    key = f"big/alice/{path.removeprefix('/big/')}"
    assert len(multipart_uploads(s3_client, key)) == 1
    entry = {"path": path, "upload_id": begun["upload_id"]}
    assert await _sign(client, ALICE, "abort", entry) == [{"path": path, "status": 204}]
    assert multipart_uploads(s3_client, key) == []
    (gone,) = await _sign(client, ALICE, "resume", {**entry, "size": SIZE})
    assert gone == {"path": path, "status": 404, "error": "no such upload"}


async def test_another_user_naming_an_upload_id_gets_nothing(
    proxy, s3: S3Objects, s3_client: Any
) -> None:
    client = await proxy(_config(s3.endpoint))
    path = f"/big/{fresh()}"
    (begun,) = await _sign(
        client, ALICE, "multipart", {"path": path, "content_type": "video/mp4", "size": SIZE}
    )
    async with aiohttp.ClientSession() as session:
        etag = await _put_part(session, begun["parts"][0]["url"], _body(5 * MIB))
    upload_id = begun["upload_id"]
    attempts = {
        "resume": {"path": path, "upload_id": upload_id, "size": SIZE},
        "complete": {"path": path, "upload_id": upload_id, "parts": [{"number": 1, "etag": etag}]},
        "abort": {"path": path, "upload_id": upload_id},
    }
    for kind, entry in attempts.items():
        (answer,) = await _sign(client, BOB, kind, entry)
        assert answer == {"path": path, "status": 404, "error": "no such upload"}, kind
    name = path.removeprefix("/big/")
    assert [u["Key"] for u in multipart_uploads(s3_client, f"big/alice/{name}")] == [
        f"big/alice/{name}"
    ]
    assert multipart_uploads(s3_client, f"big/bob/{name}") == []
    (still,) = await _sign(client, ALICE, "resume", attempts["resume"])
    assert still["uploaded"] == [{"number": 1, "size": 5 * MIB, "etag": etag}]
    await _sign(client, ALICE, "abort", attempts["abort"])


@pytest.mark.parametrize(
    ("entry", "status", "error"),
    [
        ({"content_type": "video/mp4", "size": MAX + 1}, 413, f"at most {MAX} bytes"),
        ({"content_type": "text/html", "size": 10}, 415, "Content-Type not allowed here"),
        ({"size": 10}, 415, "Content-Type required"),
        ({"content_type": "video/mp4"}, 400, "size (the file's byte count, at least 1) required"),
    ],
)
async def test_oversize_and_wrong_types_are_refused_before_s3_is_touched(
    proxy, entry: dict[str, Any], status: int, error: str
) -> None:
    storage = FakeStorage()
    client = await proxy(_config(None), storage=storage)
    (answer,) = await _sign(client, ALICE, "multipart", {"path": "/big/x.bin", **entry})
    assert answer == {"path": "/big/x.bin", "status": status, "error": error}
    assert storage.calls == []


async def test_entries_are_authorized_like_an_upload_of_their_path(proxy) -> None:
    storage = FakeStorage()
    data = _config(None)
    data["routes"].append(
        {**ROUTE, "name": "no-multipart", "match": "/plain/{path:.+}", "upload": {"max_bytes": MAX}}
    )
    client = await proxy(data, storage=storage)
    entry = {"content_type": "video/mp4", "size": 10}
    cases = [
        ("/nowhere/x.bin", 404, "not found"),
        ("/plain/x.bin", 405, "method not allowed"),
        ("x.bin", 404, "not found"),
    ]
    for path, status, error in cases:
        (answer,) = await _sign(client, ALICE, "multipart", {"path": path, **entry})
        assert answer == {"path": path, "status": status, "error": error}
    anonymous = await client.post("/_sign", json={"multipart": [{"path": "/big/x.bin", **entry}]})
    (refused,) = (await anonymous.json())["multipart"]
    assert (refused["status"], refused["error"]) == (401, "authentication required")
    assert storage.calls == []


async def test_malformed_requests_and_entries(proxy) -> None:
    storage = FakeStorage()
    client = await proxy(_config(None, max_paths=3), storage=storage)
    not_a_list = await client.post(
        "/_sign", json={"resume": {"path": "/big/x"}}, headers=_user(ALICE)
    )
    assert not_a_list.status == 400
    too_many = await client.post(
        "/_sign",
        json={
            "paths": ["/photos/1", "/photos/2"],
            "abort": [{"path": "/big/a"}, {"path": "/big/b"}],
        },
        headers=_user(ALICE),
    )
    assert too_many.status == 413
    answers = await _sign(
        client,
        ALICE,
        "complete",
        {"path": "/big/x.bin", "upload_id": "u p", "parts": [{"number": 1, "etag": "e"}]},
        {"path": "/big/x.bin", "upload_id": "upload-1", "parts": [{"number": 1}]},
    )
    assert [answer["status"] for answer in answers] == [400, 400]
    response = await client.post("/_sign", json={"abort": ["/big/x.bin"]}, headers=_user(ALICE))
    assert (await response.json())["abort"] == [
        {"path": "", "status": 400, "error": 'each entry is {"path": "/path", ...}'}
    ]
    assert storage.calls == []


async def test_part_urls_are_shared_out_within_max_paths(proxy) -> None:
    storage = FakeStorage()
    client = await proxy(_config(None, max_paths=5), storage=storage)
    entry = {"content_type": "video/mp4", "size": 20 * MIB}  # 4 parts each
    first, second = await _sign(
        client, ALICE, "multipart", {"path": "/big/a.bin", **entry}, {"path": "/big/b.bin", **entry}
    )
    assert [part["number"] for part in first["parts"]] == [1, 2, 3, 4]
    assert [part["number"] for part in second["parts"]] == [1]  # the rest through resume


async def test_each_entry_spends_its_routes_rate_limit(proxy) -> None:
    storage = FakeStorage()
    client = await proxy(
        _config(None, rate_limit={"per_subject": {"rate": 0.001, "burst": 2}}),
        storage=storage,
    )
    entry = {"content_type": "video/mp4", "size": 10}
    answers = await _sign(
        client, ALICE, "multipart", *({"path": f"/big/{n}.bin", **entry} for n in range(3))
    )
    assert [answer.get("status", 200) for answer in answers] == [200, 200, 429]
    creates = [call for call in storage.calls if call[0] == "CreateMultipartUpload"]
    assert len(creates) == 2


async def test_each_step_is_logged_and_counted(
    proxy, s3: S3Objects, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    data = _config(s3.endpoint)
    data["metrics"] = {"enabled": True, "listen": "main", "access": "public"}
    client = await proxy(data)
    path = f"/big/{fresh()}"
    (begun,) = await _sign(
        client, ALICE, "multipart", {"path": path, "content_type": "video/mp4", "size": 10}
    )
    await _sign(client, ALICE, "abort", {"path": path, "upload_id": begun["upload_id"]})
    await _sign(client, BOB, "abort", {"path": path, "upload_id": begun["upload_id"]})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
    reasons = [line["reason"] for line in lines if line["route"] == "sign-api"]
    assert reasons == [
        "0 paths, 1 multipart (1 part URLs)",
        "0 paths, 1 abort",
        "0 paths, 1 abort (1 refused)",
    ]
    for line in lines:
        assert begun["upload_id"] not in json.dumps(line)  # not a secret, but not the log's
    text = await (await client.get("/metrics")).text()
    for series in (
        'proxy_multipart_steps_total{outcome="ok",step="multipart"} 1.0',
        'proxy_multipart_steps_total{outcome="ok",step="abort"} 1.0',
        'proxy_multipart_steps_total{outcome="refused",step="abort"} 1.0',
        "proxy_multipart_part_urls_total 1.0",
        'proxy_s3_requests_total{operation="ListMultipartUploads",outcome="ok"} 2.0',
    ):
        assert series in text, series


async def test_multipart_steps_count_toward_max_uploads(proxy, s3: S3Objects) -> None:
    """Issue 21 item 4: every entry that writes (forms and multipart steps) costs S3 calls,
    so sign_api.max_uploads bounds them together, before any S3 call."""
    client = await proxy(_config(s3.endpoint))
    begin = {"path": f"/big/{fresh('x.bin')}", "size": SIZE}
    form = {"path": "/big/y.bin", "content_type": "video/mp4"}
    body = {"multipart": [begin] * 60, "abort": [{"path": "/big/z.bin", "upload_id": "u"}] * 30}
    response = await client.post(
        "/_sign", json={**body, "uploads": [form] * 11}, headers=_user(ALICE)
    )
    assert response.status == 413
    assert await response.json() == {"error": "at most 100 uploads per request"}


async def test_one_request_lists_a_keys_open_uploads_once(proxy, s3: S3Objects) -> None:
    """A batch of entries naming upload ids on one key (bogus or repeated) must not cost an
    S3 listing each: on AWS each walk may take ten pages of 1,000 uploads, so a request of
    sign_api.max_paths such entries would make ten times as many ListMultipartUploads."""
    data = _config(s3.endpoint)
    data["metrics"] = {"enabled": True, "listen": "main", "access": "public"}
    client = await proxy(data)
    path = f"/big/{fresh()}"
    (begun,) = await _sign(
        client, ALICE, "multipart", {"path": path, "content_type": "video/mp4", "size": 10}
    )
    bogus = [{"path": path, "upload_id": f"guess-{n}", "size": 10} for n in range(20)]
    real = {"path": path, "upload_id": begun["upload_id"], "size": 10}
    answers = await _sign(client, ALICE, "resume", *bogus, real, real)
    assert [answer.get("status", 200) for answer in answers] == [404] * 20 + [200, 200]
    (gone,) = await _sign(client, ALICE, "abort", real)
    assert gone["status"] == 204
    text = await (await client.get("/metrics")).text()
    # One listing for the resume request, one for the abort request.
    assert 'proxy_s3_requests_total{operation="ListMultipartUploads",outcome="ok"} 2.0' in text
