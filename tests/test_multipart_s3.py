"""Presigned multipart uploads below the HTTP surface: the flows (proxy/uploads/multipart.py)
on each engine against a real moto S3 server, parts sent with real HTTP PUTs to the presigned
part URLs; and, with a counting FakeStorage, what is refused before S3 is touched.

moto answers ListParts, UploadPart, CompleteMultipartUpload and AbortMultipartUpload by upload
id alone, whatever key the request names: so these tests also show that the proxy's own key
binding (Writes.open_uploads) is what stops another user's id, not S3's.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import boto3
import pytest
from aiobotocore.session import get_session

from proxy.config import Config, Route
from proxy.engines import Engine, create_engine
from proxy.engines.writes import LazyClient, ObjectWriter
from proxy.errors import (
    BadRequest,
    KeyExists,
    MethodNotAllowed,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
    UploadNotFound,
)
from proxy.ops.measured import MeasuredStorage
from proxy.ops.metrics import Telemetry
from proxy.request import ObjectRef
from proxy.storage import WriteCondition
from proxy.uploads import PartSigning, abort, begin, complete, multipart_place, resume

from .conftest import S3Objects, build_config, config_dict
from .fakes import FakeStorage
from .sigv4 import verify_presigned_url
from .test_uploads import BUCKET, fresh, multipart_uploads

MIB = 1024 * 1024
MAX = 64 * MIB
SIZE = 12 * MIB + 5  # three parts of 5 MiB, 5 MiB and 2 MiB + 5
ENGINES = ("builtin", "aiobotocore")

ROUTE: dict[str, Any] = {
    "name": "big-files",
    "match": "/big/{path:.+}",
    "bucket": BUCKET,
    "key": "big/{claims.sub}/{path}",
    "delivery": "redirect",
    "access": "authenticated",
    "methods": ["GET", "POST"],
    "upload": {
        "max_bytes": MAX,
        "multipart": True,
        "part_size": 5 * MIB,
        "content_types": ["application/octet-stream", "video/*"],
    },
}


def _config(endpoint: str, engine: str = "builtin", **upload: Any) -> Config:
    data = config_dict(endpoint)
    route = {**ROUTE, "upload": {**ROUTE["upload"], **upload}}
    data["routes"] = [route]
    data["s3"]["engine"] = engine
    return build_config(data)


def _route(config: Config) -> Route:
    return config.routes[0]


def _ref(key: str) -> ObjectRef:
    return ObjectRef(BUCKET, key)


def _signing() -> PartSigning:
    return PartSigning(ttl=300, now=time.time(), token_expires_at=None)


def _body(size: int = SIZE) -> bytes:
    """Bytes whose every part differs from every other (so does each part's ETag)."""
    return random.Random(size).randbytes(size)


@pytest.fixture(params=ENGINES)
async def storage(request: pytest.FixtureRequest, s3: S3Objects) -> AsyncIterator[Engine]:
    engine = create_engine(_config(s3.endpoint, request.param).settings.s3)
    await engine.open()
    yield engine
    await engine.close()


@pytest.fixture
def s3_client(s3: S3Objects) -> Any:
    return boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")


async def _put_part(session: aiohttp.ClientSession, url: str, body: bytes) -> str:
    """One part, as a browser would send it: a plain PUT of its bytes to the URL."""
    async with session.put(
        url, data=io.BytesIO(body), headers={"Content-Length": str(len(body))}
    ) as response:
        assert response.status == 200, await response.text()
        return response.headers["ETag"]


def _slice(body: bytes, number: int, part_size: int) -> bytes:
    return body[(number - 1) * part_size : number * part_size]


async def test_parts_sent_to_presigned_urls_resume_after_a_drop_and_read_back(
    storage: Engine, s3: S3Objects, s3_client: Any
) -> None:
    route = _route(_config(s3.endpoint))
    key = f"big/alice/{fresh('movie.bin')}"
    place = multipart_place(route, _ref(key))
    body = _body()
    started = await begin(storage, place, "application/octet-stream", SIZE, _signing(), 2)
    part_size = started["part_size"]
    assert part_size == 5 * MIB
    assert [part["number"] for part in started["parts"]] == [1, 2]  # the budget: 2 URLs
    first = started["parts"][0]["url"]
    # Each URL signs its part's exact length, and names the upload and the part.
    params = verify_presigned_url(
        first, secret_key="testing", method="PUT", headers={"content-length": str(5 * MIB)}
    )
    assert (params["partNumber"], params["uploadId"]) == ("1", started["upload_id"])
    async with aiohttp.ClientSession() as session:
        etag_1 = await _put_part(session, first, _slice(body, 1, part_size))
        # The connection drops here: part 2's URL is never used. Later, from the size alone:
        resumed = await resume(storage, place, started["upload_id"], SIZE, _signing(), 100)
        assert resumed["upload_id"] == started["upload_id"]
        assert resumed["part_size"] == part_size
        assert resumed["uploaded"] == [{"number": 1, "size": 5 * MIB, "etag": etag_1}]
        assert [part["number"] for part in resumed["parts"]] == [2, 3]
        etags = [etag_1]
        for part in resumed["parts"]:
            etags.append(
                await _put_part(session, part["url"], _slice(body, part["number"], part_size))
            )
    listed = [{"number": n, "etag": etag} for n, etag in enumerate(etags, start=1)]
    done = await complete(storage, place, started["upload_id"], listed)
    assert done.size == SIZE
    assert done.answer() == {"status": 201, "etag": done.etag}
    stored = s3_client.get_object(Bucket=BUCKET, Key=key)
    assert stored["Body"].read() == body
    assert stored["ContentType"] == "application/octet-stream"
    assert done.etag.strip('"').endswith("-3")  # S3's ETag of a 3-part object
    assert multipart_uploads(s3_client, key) == []


async def test_abort_leaves_no_upload_listed(
    storage: Engine, s3: S3Objects, s3_client: Any
) -> None:
    place = multipart_place(_route(_config(s3.endpoint)), _ref(f"big/alice/{fresh()}"))
    started = await begin(storage, place, "video/mp4", SIZE, _signing(), 1)
    async with aiohttp.ClientSession() as session:
        await _put_part(session, started["parts"][0]["url"], _body(5 * MIB))
    assert len(multipart_uploads(s3_client, place.ref.key)) == 1
    assert await abort(storage, place, started["upload_id"]) == {"status": 204}
    assert multipart_uploads(s3_client, place.ref.key) == []
    with pytest.raises(UploadNotFound):
        await resume(storage, place, started["upload_id"], SIZE, _signing(), 10)
    with pytest.raises(UploadNotFound):
        await abort(storage, place, started["upload_id"])


async def test_another_users_key_gets_nothing_from_an_upload_id(
    storage: Engine, s3: S3Objects, s3_client: Any
) -> None:
    """Bob names Alice's upload id on his own path: 404 for every step, before any URL is
    signed or any part listed; Alice's upload is untouched and nothing lands at Bob's key."""
    route = _route(_config(s3.endpoint))
    name = fresh()
    alices = multipart_place(route, _ref(f"big/alice/{name}"))
    bobs = multipart_place(route, _ref(f"big/bob/{name}"))
    started = await begin(storage, alices, "video/mp4", SIZE, _signing(), 1)
    async with aiohttp.ClientSession() as session:
        etag = await _put_part(session, started["parts"][0]["url"], _body(5 * MIB))
    upload_id = started["upload_id"]
    with pytest.raises(UploadNotFound):
        await resume(storage, bobs, upload_id, SIZE, _signing(), 10)
    with pytest.raises(UploadNotFound):
        await complete(storage, bobs, upload_id, [{"number": 1, "etag": etag}])
    with pytest.raises(UploadNotFound):
        await abort(storage, bobs, upload_id)
    # A prefix of Alice's key is not her key either.
    prefix = multipart_place(route, _ref(alices.ref.key[:-1]))
    with pytest.raises(UploadNotFound):
        await resume(storage, prefix, upload_id, SIZE, _signing(), 10)
    assert [u["Key"] for u in multipart_uploads(s3_client, alices.ref.key)] == [alices.ref.key]
    assert multipart_uploads(s3_client, bobs.ref.key) == []
    assert s3_client.list_objects_v2(Bucket=BUCKET, Prefix=bobs.ref.key).get("KeyCount") == 0
    still = await resume(storage, alices, upload_id, SIZE, _signing(), 10)
    assert still["uploaded"] == [{"number": 1, "size": 5 * MIB, "etag": etag}]
    await abort(storage, alices, upload_id)


async def test_a_wrong_part_list_is_a_400_and_the_upload_stays_resumable(
    storage: Engine, s3: S3Objects, s3_client: Any
) -> None:
    place = multipart_place(_route(_config(s3.endpoint)), _ref(f"big/alice/{fresh()}"))
    started = await begin(storage, place, "video/mp4", SIZE, _signing(), 3)
    body = _body()
    async with aiohttp.ClientSession() as session:
        etags = [
            await _put_part(session, part["url"], _slice(body, part["number"], 5 * MIB))
            for part in started["parts"][:2]
        ]
    upload_id = started["upload_id"]
    wrong_lists = [
        [{"number": 1, "etag": etags[0]}, {"number": 3, "etag": etags[1]}],  # 3 not sent
        [{"number": 1, "etag": etags[1]}, {"number": 2, "etag": etags[1]}],  # wrong ETag
    ]
    for wrong in wrong_lists:
        with pytest.raises(BadRequest):
            await complete(storage, place, upload_id, wrong)
    # S3's own refusal of a list (the proxy's check bypassed) is the same clear 400.
    with pytest.raises(BadRequest) as refused:
        await storage.writes.complete_multipart(
            place.ref, upload_id, [(1, etags[1]), (2, etags[1])], WriteCondition(None)
        )
    assert refused.value.status == 400
    assert "InvalidPart" in refused.value.reason
    resumed = await resume(storage, place, upload_id, SIZE, _signing(), 10)
    assert [part["number"] for part in resumed["uploaded"]] == [1, 2]
    assert [part["number"] for part in resumed["parts"]] == [3]
    await abort(storage, place, upload_id)


async def test_complete_does_not_overwrite_a_key_taken_meanwhile(
    storage: Engine, s3: S3Objects, s3_client: Any
) -> None:
    """overwrite: false is S3's conditional write at completion (If-None-Match: *): a file
    that landed at the key while the parts were uploading is kept."""
    place = multipart_place(_route(_config(s3.endpoint)), _ref(f"big/alice/{fresh()}"))
    started = await begin(storage, place, "video/mp4", 100, _signing(), 1)
    async with aiohttp.ClientSession() as session:
        etag = await _put_part(session, started["parts"][0]["url"], _body(100))
    s3_client.put_object(Bucket=BUCKET, Key=place.ref.key, Body=b"first")
    with pytest.raises(KeyExists):
        await complete(storage, place, started["upload_id"], [{"number": 1, "etag": etag}])
    assert s3_client.get_object(Bucket=BUCKET, Key=place.ref.key)["Body"].read() == b"first"
    # And a taken key is refused before an upload begins at all.
    with pytest.raises(KeyExists):
        await begin(storage, place, "video/mp4", 100, _signing(), 1)
    await abort(storage, place, started["upload_id"])


async def test_overwrite_true_replaces_the_object(
    storage: Engine, s3: S3Objects, s3_client: Any
) -> None:
    place = multipart_place(
        _route(_config(s3.endpoint, overwrite=True)), _ref(f"big/alice/{fresh()}")
    )
    s3_client.put_object(Bucket=BUCKET, Key=place.ref.key, Body=b"old")
    started = await begin(storage, place, "video/mp4", 3, _signing(), 1)
    async with aiohttp.ClientSession() as session:
        etag = await _put_part(session, started["parts"][0]["url"], b"new")
    await complete(storage, place, started["upload_id"], [{"number": 1, "etag": etag}])
    assert s3_client.get_object(Bucket=BUCKET, Key=place.ref.key)["Body"].read() == b"new"


async def test_list_parts_walks_every_page(s3: S3Objects, s3_client: Any) -> None:
    settings = _config(s3.endpoint).settings.s3
    client = LazyClient(settings, get_session())
    writer = ObjectWriter(settings, client, page=2)
    key = f"big/alice/{fresh()}"
    upload_id = s3_client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    try:
        for number in range(1, 6):
            s3_client.upload_part(
                Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=b"x" * number
            )
        parts = await writer.list_parts(_ref(key), upload_id)
        assert [(part.number, part.size) for part in parts] == [(n, n) for n in range(1, 6)]
        assert await writer.open_uploads(_ref(key)) == {upload_id}
        assert upload_id not in await writer.open_uploads(_ref(key + "x"))
    finally:
        s3_client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)
        await client.close()


async def test_a_token_about_to_expire_begins_no_upload(s3: S3Objects) -> None:
    fake = FakeStorage()
    place = multipart_place(_route(_config(s3.endpoint)), _ref("big/alice/x.bin"))
    expiring = PartSigning(ttl=300, now=1000.0, token_expires_at=1000.0)
    with pytest.raises(Unauthenticated):
        await begin(fake, place, "video/mp4", 10, expiring, 5)
    assert [call[0] for call in fake.calls] == ["head"]  # no CreateMultipartUpload


@pytest.mark.parametrize(
    ("content_type", "size", "refused"),
    [
        ("application/octet-stream", MAX + 1, PayloadTooLarge),
        ("text/html", 10, UnsupportedMediaType),
        (None, 10, UnsupportedMediaType),
        ("video/mp4", None, BadRequest),
        ("video/mp4", "10", BadRequest),
        ("video/mp4", 0, BadRequest),
    ],
)
async def test_oversize_and_wrong_types_are_refused_before_s3_is_touched(
    s3: S3Objects, content_type: str | None, size: object, refused: type[Exception]
) -> None:
    fake = FakeStorage()
    place = multipart_place(_route(_config(s3.endpoint)), _ref("big/alice/x.bin"))
    with pytest.raises(refused):
        await begin(fake, place, content_type, size, _signing(), 5)
    assert fake.calls == []


@pytest.mark.parametrize(
    "step",
    ["resume-id", "resume-size", "complete-id", "complete-parts", "abort-id"],
)
async def test_malformed_entries_are_refused_before_s3_is_touched(s3: S3Objects, step: str) -> None:
    fake = FakeStorage()
    place = multipart_place(_route(_config(s3.endpoint)), _ref("big/alice/x.bin"))
    good_parts = [{"number": 1, "etag": "e"}]
    calls = {
        "resume-id": resume(fake, place, "a b", 10, _signing(), 5),
        "resume-size": resume(fake, place, "upload-1", MAX + 1, _signing(), 5),
        "complete-id": complete(fake, place, ["upload-1"], good_parts),
        "complete-parts": complete(fake, place, "upload-1", [{"number": 1}]),
        "abort-id": abort(fake, place, "x" * 1025),
    }
    for name, call in calls.items():
        if name != step:
            call.close()
    with pytest.raises((BadRequest, PayloadTooLarge)):
        await calls[step]
    assert fake.calls == []


async def test_a_route_without_multipart_takes_none(s3: S3Objects) -> None:
    route = _route(_config(s3.endpoint, multipart=False))
    with pytest.raises(MethodNotAllowed):
        multipart_place(route, _ref("big/alice/x.bin"))


async def test_the_budget_caps_the_urls_of_one_answer(s3: S3Objects) -> None:
    fake = FakeStorage()
    place = multipart_place(_route(_config(s3.endpoint)), _ref("big/alice/x.bin"))
    started = await begin(fake, place, "video/mp4", MAX, _signing(), 4)
    assert [part["number"] for part in started["parts"]] == [1, 2, 3, 4]  # of 13
    none = await begin(fake, place, "video/mp4", MAX, _signing(), 0)
    assert none["parts"] == []
    resumed = await resume(fake, place, started["upload_id"], MAX, _signing(), 20)
    assert [part["number"] for part in resumed["parts"]] == list(range(1, 14))
    assert "length=4194304" in resumed["parts"][-1]["url"]  # 64 MiB - 12 x 5 MiB


async def test_every_multipart_s3_call_and_step_is_counted() -> None:
    telemetry = Telemetry()
    fake = FakeStorage()
    measured = MeasuredStorage(fake, telemetry)
    upload_id = await measured.writes.start_multipart(_ref("k"), "video/mp4")
    assert await measured.writes.open_uploads(_ref("k")) == {upload_id}
    assert await measured.writes.list_parts(_ref("k"), upload_id) == []
    with pytest.raises(UploadNotFound):
        await measured.writes.list_parts(_ref("other"), upload_id)
    telemetry.multipart_step("multipart", 200, part_urls=7)
    telemetry.multipart_step("complete", 400)
    telemetry.multipart_step("abort", 502)
    text = telemetry.render().decode()
    for line in (
        'proxy_s3_requests_total{operation="CreateMultipartUpload",outcome="ok"} 1.0',
        'proxy_s3_requests_total{operation="ListMultipartUploads",outcome="ok"} 1.0',
        'proxy_s3_requests_total{operation="ListParts",outcome="ok"} 1.0',
        'proxy_s3_requests_total{operation="ListParts",outcome="not_found"} 1.0',
        'proxy_multipart_steps_total{outcome="ok",step="multipart"} 1.0',
        'proxy_multipart_steps_total{outcome="refused",step="complete"} 1.0',
        'proxy_multipart_steps_total{outcome="failed",step="abort"} 1.0',
        "proxy_multipart_part_urls_total 7.0",
    ):
        assert line in text, line
