"""Redirect uploads over real sockets: a PUT answered 307 to a presigned PUT, and the sign
API's presigned POST forms, each then used against moto; signatures recomputed here."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from .conftest import S3Objects, bearer, config_dict, make_token
from .faulty_s3 import FaultyS3
from .sigv4 import verify_presigned_url
from .test_uploads import BUCKET, assert_nothing_left, fresh

pytestmark = pytest.mark.both_engines

MAX = 1024 * 1024


def alice() -> dict[str, str]:
    """A short-lived token (its exp caps what is signed), minted when the test runs."""
    return bearer(make_token("alice", ttl=120))


REDIRECT_ROUTE: dict[str, Any] = {
    "name": "direct-uploads",
    "match": "/direct/{path:.+}",
    "bucket": BUCKET,
    "key": "direct/{claims.sub}/{path}",
    "delivery": "redirect",
    "access": "authenticated",
    "methods": ["GET", "PUT", "POST"],
    "ttl": 600,
    "upload": {"max_bytes": MAX, "content_types": ["image/*", "text/plain"]},
}


def redirect_config(endpoint: str) -> dict[str, Any]:
    data = config_dict(endpoint)
    data["routes"] = [REDIRECT_ROUTE, *data["routes"]]
    return data


@pytest.fixture
def s3_client(s3: S3Objects) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")


async def test_put_is_307_to_a_url_signing_type_and_length(
    proxy, s3: S3Objects, s3_client: Any
) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    path = fresh("p.png")
    body = b"\x89PNG fake image"
    headers = {**alice(), "Content-Type": "image/png"}
    response = await client.put(
        f"/direct/{path}", data=body, headers=headers, allow_redirects=False
    )
    assert response.status == 307
    assert response.headers["Cache-Control"] == "no-store"
    url = response.headers["Location"]
    params = verify_presigned_url(
        url,
        secret_key="testing",
        method="PUT",
        now=datetime.now(UTC),
        headers={"content-type": "image/png", "content-length": str(len(body))},
    )
    assert params["X-Amz-SignedHeaders"] == "content-length;content-type;host"
    assert int(params["X-Amz-Expires"]) <= 120  # no longer than the token
    # The client follows it with the same type and length (and without its token).
    async with (
        aiohttp.ClientSession() as session,
        session.put(url, data=body, headers={"Content-Type": "image/png"}) as direct,
    ):
        assert direct.status == 200
    stored = s3_client.get_object(Bucket=BUCKET, Key=f"direct/alice/{path}")
    assert stored["Body"].read() == body
    assert stored["ContentType"] == "image/png"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Type": "text/html"}, 415),
        ({"Content-Type": "image/png", "Content-Length": str(MAX + 1)}, 413),
    ],
)
async def test_put_refusals(proxy, s3: S3Objects, headers: dict[str, str], status: int) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    response = await client.put(
        f"/direct/{fresh()}",
        data=b"" if "Content-Length" in headers else b"x",
        headers={**alice(), **headers},
        allow_redirects=False,
    )
    assert response.status == status


async def test_chunked_put_is_411(proxy, s3: S3Objects) -> None:
    client = await proxy(redirect_config(s3.endpoint))

    async def body() -> Any:
        yield b"x"

    response = await client.put(
        f"/direct/{fresh()}",
        data=body(),
        headers={**alice(), "Content-Type": "text/plain"},
        allow_redirects=False,
    )
    assert response.status == 411


async def test_put_to_an_existing_key_is_409(proxy, s3: S3Objects, s3_client: Any) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    path = fresh("q.txt")
    s3_client.put_object(Bucket=BUCKET, Key=f"direct/alice/{path}", Body=b"there")
    response = await client.put(
        f"/direct/{path}",
        data=b"x",
        headers={**alice(), "Content-Type": "text/plain"},
        allow_redirects=False,
    )
    assert response.status == 409


async def test_put_without_a_token_is_401(proxy, s3: S3Objects) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    response = await client.put(
        f"/direct/{fresh()}", data=b"x", headers={"Content-Type": "text/plain"}
    )
    assert response.status == 401


def _check_policy(fields: dict[str, str], key: str, content_type: str) -> dict[str, Any]:
    """Recompute the form's signature from the secret; return the decoded policy."""
    date = fields["x-amz-date"][:8]
    signing_key = b"AWS4testing"
    for part in (date, "us-east-1", "s3", "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(signing_key, fields["policy"].encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, fields["x-amz-signature"])
    policy = json.loads(base64.b64decode(fields["policy"]))
    conditions = policy["conditions"]
    assert {"bucket": BUCKET} in conditions
    assert {"key": key} in conditions
    assert {"Content-Type": content_type} in conditions
    assert ["content-length-range", 0, MAX] in conditions
    assert fields["x-amz-credential"] == f"testing/{date}/us-east-1/s3/aws4_request"
    return policy


async def test_sign_api_answers_a_post_form_that_moto_accepts(
    proxy, s3: S3Objects, s3_client: Any
) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    path = fresh("r.txt")
    response = await client.post(
        "/_sign",
        json={"uploads": [{"path": f"/direct/{path}", "content_type": "text/plain", "size": 5}]},
        headers=alice(),
    )
    assert response.status == 200
    answer = await response.json()
    assert answer["results"] == []
    (entry,) = answer["uploads"]
    assert entry["path"] == f"/direct/{path}"
    key = f"direct/alice/{path}"
    policy = _check_policy(entry["fields"], key, "text/plain")
    expiration = datetime.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ")
    # No later than the token's exp (120 s), though the route's ttl is 600 s.
    assert expiration.replace(tzinfo=UTC).timestamp() <= time.time() + 121
    assert entry["expires_at"] == policy["expiration"]
    form = aiohttp.FormData()
    for name, value in entry["fields"].items():
        form.add_field(name, value)
    form.add_field("file", b"hello", filename="r.txt", content_type="text/plain")
    async with aiohttp.ClientSession() as session, session.post(entry["url"], data=form) as up:
        assert up.status in (200, 201, 204), await up.text()
    stored = s3_client.get_object(Bucket=BUCKET, Key=key)
    assert stored["Body"].read() == b"hello"


async def test_sign_api_upload_refusals_are_per_entry(proxy, s3: S3Objects, s3_client: Any) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    existing = fresh("s.txt")
    s3_client.put_object(Bucket=BUCKET, Key=f"direct/alice/{existing}", Body=b"there")
    entries = [
        {"path": f"/direct/{fresh()}", "content_type": "text/html", "size": 1},
        {"path": f"/direct/{fresh()}", "content_type": "text/plain", "size": MAX + 1},
        {"path": f"/direct/{existing}", "content_type": "text/plain", "size": 1},
        {"path": "/photos/42", "content_type": "image/jpeg", "size": 1},  # no POST there
        {"path": "/nowhere", "content_type": "text/plain"},
        {"path": f"/direct/{fresh()}"},
        {"path": f"/direct/{fresh()}", "content_type": "text/plain", "size": -1},
        {"content_type": "text/plain"},
        {"path": f"/direct/{fresh()}", "content_type": "image/png"},  # size is optional
    ]
    response = await client.post("/_sign", json={"uploads": entries}, headers=alice())
    assert response.status == 200
    statuses = [entry.get("status", 200) for entry in (await response.json())["uploads"]]
    assert statuses == [415, 413, 409, 405, 404, 415, 400, 400, 200]


async def test_sign_api_upload_needs_the_routes_access(proxy, s3: S3Objects) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    entry = {"path": f"/direct/{fresh()}", "content_type": "text/plain", "size": 1}
    response = await client.post("/_sign", json={"uploads": [entry]})
    assert response.status == 200
    (answer,) = (await response.json())["uploads"]
    assert answer["status"] == 401
    assert "fields" not in answer


async def test_nothing_is_left_by_refused_sign_requests(
    proxy, s3: S3Objects, s3_client: Any
) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    path = fresh()
    entry = {"path": f"/direct/{path}", "content_type": "text/html", "size": 1}
    await client.post("/_sign", json={"uploads": [entry]}, headers=alice())
    assert_nothing_left(s3_client, f"direct/alice/{path}")


async def test_paths_and_uploads_share_one_request(proxy, s3: S3Objects) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    entry = {"path": f"/direct/{fresh()}", "content_type": "text/plain", "size": 1}
    response = await client.post(
        "/_sign", json={"paths": ["/photos/42"], "uploads": [entry]}, headers=alice()
    )
    answer = await response.json()
    assert "url" in answer["results"][0]
    assert "fields" in answer["uploads"][0]


@pytest.mark.parametrize(
    ("body", "status"),
    [({"uploads": {"path": "/direct/x"}}, 400), ({"uploads": [{}] * 1001}, 413)],
)
async def test_malformed_or_oversized_upload_batches(
    proxy, s3: S3Objects, body: dict[str, Any], status: int
) -> None:
    client = await proxy(redirect_config(s3.endpoint))
    response = await client.post("/_sign", json=body, headers=alice())
    assert response.status == status


# --- issue 21 item 4: a sign API batch costs S3 no more than its distinct objects ---------


@pytest.fixture
async def counted(s3: S3Objects) -> AsyncIterator[FaultyS3]:
    """moto behind a FaultyS3 that records each request (and holds what a test asks)."""
    server = FaultyS3(upstream=s3.endpoint)
    await server.start()
    yield server
    await server.close()


def _heads(server: FaultyS3) -> list[str]:
    return [path for path in server.paths if path.startswith("HEAD ")]


@pytest.mark.parametrize("count", [101, 1000])
async def test_a_batch_of_too_many_upload_forms_is_413_before_any_s3_call(
    proxy, counted: FaultyS3, count: int
) -> None:
    client = await proxy(redirect_config(counted.url))
    entry = {"path": "/direct/same.txt", "content_type": "text/plain", "size": 1}
    response = await client.post("/_sign", json={"uploads": [entry] * count}, headers=alice())
    assert response.status == 413
    assert await response.json() == {"error": "at most 100 uploads per request"}
    assert _heads(counted) == []


async def test_each_object_is_asked_about_once_per_batch(proxy, counted: FaultyS3) -> None:
    """One POST naming one upload path 100 times made 100 sequential HEADs of that key, and
    a page naming one `auto` path many times as many metadata HEADs."""
    client = await proxy(redirect_config(counted.url))
    name = fresh("d.txt")
    entry = {"path": f"/direct/{name}", "content_type": "text/plain", "size": 1}
    body = {"paths": ["/auto/q4.pdf"] * 20, "uploads": [entry] * 100}
    response = await client.post("/_sign", json=body, headers=alice())
    assert response.status == 200
    answer = await response.json()
    assert len(answer["uploads"]) == 100 and all("fields" in form for form in answer["uploads"])
    assert [result["url"] for result in answer["results"]] == ["/auto/q4.pdf"] * 20
    assert sorted(_heads(counted)) == [
        "HEAD /reports/exports/q4.pdf",
        f"HEAD /{BUCKET}/direct/alice/{name}",
    ]


async def test_a_batchs_absence_checks_run_a_few_at_a_time(proxy, counted: FaultyS3) -> None:
    counted.hold = {"HEAD"}  # S3 never answers: the checks pile up as far as they may
    client = await proxy(redirect_config(counted.url))
    entries = [
        {"path": f"/direct/{fresh()}", "content_type": "text/plain", "size": 1} for _ in range(40)
    ]
    batch = asyncio.ensure_future(client.post("/_sign", json={"uploads": entries}, headers=alice()))
    try:
        async with asyncio.timeout(10):
            while counted.held < 8:  # noqa: ASYNC110 - the state is in the fake S3
                await asyncio.sleep(0.01)
        # Each of the 8 holds the gate until S3 answers, which it never does: no 9th.
        assert counted.held == 8 and not batch.done()
    finally:
        batch.cancel()


async def test_each_upload_form_spends_its_routes_rate_limit(proxy, s3: S3Objects) -> None:
    data = redirect_config(s3.endpoint)
    data["routes"][0] = {**REDIRECT_ROUTE, "rate_limit": {"per_subject": {"rate": 1, "burst": 3}}}
    client = await proxy(data)
    entry = {"path": f"/direct/{fresh()}", "content_type": "text/plain", "size": 1}
    response = await client.post("/_sign", json={"uploads": [entry] * 5}, headers=alice())
    statuses = [form.get("status", 200) for form in (await response.json())["uploads"]]
    assert statuses == [200, 200, 200, 429, 429]
