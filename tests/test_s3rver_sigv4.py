"""Both engines against an S3 that verifies SigV4 signatures: @20minutes/s3rver 5.x.

moto checks no signature at all, so a signer that got the canonical request wrong would pass
every other test. s3rver 5 recomputes header signatures (GET, HEAD, ranges, SSE-C headers)
and presigned URL signatures and expiry. It mis-verifies signed values that contain `'`, so
nothing here signs one (no Content-Disposition override: photo.jpg is shown inline).
Installed by scripts/test.sh with `npm ci --prefix tests/s3rver5`; skipped where Node is not.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.engines import create_engine
from proxy.presign import plan_lifetime
from proxy.request import ObjectRef

from .conftest import bearer, build_config, config_dict, make_token
from .node_s3 import running_node_s3

pytestmark = pytest.mark.both_engines

S3RVER5 = Path(__file__).parent / "s3rver5"
PHOTO = b"\xff\xd8 a small jpeg-ish body, long enough for a range"
ALICE = bearer(make_token(ttl=86_400))  # revocation.max_token_lifetime


@pytest.fixture(scope="module")
def s3rver5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    node = shutil.which("node")
    if node is None or not (S3RVER5 / "node_modules" / "@20minutes" / "s3rver").exists():
        pytest.skip(
            "@20minutes/s3rver is not installed (needs Node.js; scripts/test.sh installs it "
            "with npm ci --prefix tests/s3rver5)"
        )
    data = tmp_path_factory.mktemp("s3rver5")
    log = data.parent / f"{data.name}.log"
    command = [node, str(S3RVER5 / "start.js"), str(data), "hr-private"]
    with running_node_s3(command, log) as (endpoint, client):
        client.put_object(
            Bucket="hr-private",
            Key="employees/42/photo.jpg",
            Body=PHOTO,
            ContentType="image/jpeg",
        )
        yield endpoint


@pytest.fixture
def s3rver_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "S3RVER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S3RVER")


def _config(endpoint: str) -> dict[str, Any]:
    data = config_dict(endpoint)
    data["routes"].append(
        {
            "name": "sealed-photos",
            "match": "/sealed/photos/{employee_id}",
            "bucket": "hr-private",
            "key": "employees/{employee_id}/photo.jpg",
            "delivery": "stream",
            "access": "authenticated",
            "sse_customer_key": "0123456789abcdef0123456789ABCDEF",
        }
    )
    return data


async def test_get_head_and_range_are_signed_as_s3_verifies(
    proxy, s3rver5: str, s3rver_credentials: None
) -> None:
    client = await proxy(_config(s3rver5))
    got = await client.get("/stream/photos/42", headers=ALICE)
    assert (got.status, await got.read()) == (200, PHOTO)
    head = await client.head("/stream/photos/42", headers=ALICE)
    assert (head.status, head.headers["Content-Length"]) == (200, str(len(PHOTO)))
    ranged = await client.get("/stream/photos/42", headers={**ALICE, "Range": "bytes=3-9"})
    assert (ranged.status, await ranged.read()) == (206, PHOTO[3:10])
    assert ranged.headers["Content-Range"] == f"bytes 3-9/{len(PHOTO)}"
    missing = await client.get("/stream/photos/7", headers=ALICE)
    assert missing.status == 404


async def test_the_sse_c_headers_are_part_of_a_verified_signature(
    proxy, s3rver5: str, s3rver_credentials: None
) -> None:
    """s3rver stores no encrypted objects, but it verifies the signature over every signed
    header, SSE-C's included (test_ssec.py checks that they are signed)."""
    client = await proxy(_config(s3rver5))
    got = await client.get("/sealed/photos/42", headers=ALICE)
    assert (got.status, await got.read()) == (200, PHOTO)
    assert (await client.head("/sealed/photos/42", headers=ALICE)).status == 200


async def test_a_wrong_secret_is_refused_by_s3_and_named_in_the_log(
    proxy,
    s3rver5: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Proof that this S3 checks signatures at all: the same request with another secret."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "S3RVER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    caplog.set_level(logging.INFO, logger="proxy.access")
    client = await proxy(_config(s3rver5))
    assert (await client.get("/stream/photos/42", headers=ALICE)).status == 502
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
    assert line["reason"].startswith("GetObject: S3 denied access (SignatureDoesNotMatch;")


async def test_presigned_urls_from_the_proxy_verify(
    proxy, s3rver5: str, s3rver_credentials: None
) -> None:
    client = await proxy(_config(s3rver5))
    response = await client.get("/photos/42", headers=ALICE, allow_redirects=False)
    assert response.status == 302
    location = response.headers["Location"]
    assert "'" not in location
    async with aiohttp.ClientSession() as plain:
        async with plain.get(location) as got:
            assert (got.status, await got.read()) == (200, PHOTO)
        tampered = location.replace("photo.jpg", "photo.jpeg")
        async with plain.get(tampered) as refused:
            assert refused.status == 403
            assert b"SignatureDoesNotMatch" in await refused.read()


async def test_presigned_upload_part_urls_verify_and_pin_their_length(
    s3rver5: str, s3rver_credentials: None, engine: str
) -> None:
    """The proxy's presigned UploadPart URLs (PUT ?partNumber=N&uploadId=...) against an S3
    that checks them: each verifies as signed, and another length, part number or upload id
    is refused. s3rver 5 has CreateMultipartUpload, UploadPart and CompleteMultipartUpload;
    it has no ListParts, ListMultipartUploads or AbortMultipartUpload, so `resume`, the key
    binding and `abort` are tested against moto (test_multipart_s3.py) instead."""
    data = _config(s3rver5)
    data["s3"]["engine"] = engine
    storage = create_engine(build_config(data).settings.s3)
    await storage.open()
    try:
        ref = ObjectRef("hr-private", "uploads/big.bin")
        upload_id = await storage.writes.start_multipart(ref, "video/mp4")
        credentials = await storage.credentials()
        lifetime = plan_lifetime(time.time(), 300)
        part = b"p" * (5 * 1024 * 1024)
        url = storage.presign_part(credentials, ref, upload_id, 1, len(part), lifetime)
        async with aiohttp.ClientSession() as plain:
            for wrong in (
                url.replace("partNumber=1", "partNumber=2"),
                url.replace(f"uploadId={upload_id}", f"uploadId={upload_id[::-1]}"),
            ):
                async with plain.put(wrong, data=io.BytesIO(part)) as refused:
                    assert refused.status == 403
                    assert b"SignatureDoesNotMatch" in await refused.read()
            async with plain.put(url, data=io.BytesIO(part[:-1])) as short:
                assert short.status == 403  # the length is signed
            async with plain.put(url, data=io.BytesIO(part)) as sent:
                assert sent.status == 200, await sent.text()
                etag = sent.headers["ETag"]
            last = storage.presign_part(credentials, ref, upload_id, 2, 3, lifetime)
            async with plain.put(last, data=b"end") as sent:
                assert sent.status == 200, await sent.text()
                etag_2 = sent.headers["ETag"]
        await storage.writes.complete_multipart(
            ref, upload_id, [(1, etag), (2, etag_2)], condition=None
        )
        async with aiohttp.ClientSession() as plain:
            url = storage.presign(credentials, "GET", ref, lifetime)
            async with plain.get(url) as got:
                assert (got.status, await got.read()) == (200, part + b"end")
    finally:
        await storage.close()
