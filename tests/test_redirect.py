"""redirect delivery over real HTTP: 302 to a presigned URL that S3 (moto) then serves."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import aiohttp
import pytest

from .conftest import S3Objects, bearer, make_token
from .sigv4 import verify_presigned_url

pytestmark = pytest.mark.both_engines

ALICE = bearer(make_token("alice"))
ADMIN = bearer(make_token("root", role="admin"))


async def test_302_to_a_presigned_get_that_serves_the_object(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get("/photos/42", headers=ALICE, allow_redirects=False)
    assert response.status == 302
    location = response.headers["Location"]
    assert response.headers["Cache-Control"] == "no-store"

    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}" == s3.endpoint
    assert parts.path == "/hr-private/employees/42/photo.jpg"
    params = verify_presigned_url(location, secret_key="testing", now=datetime.now(UTC))
    assert params["X-Amz-Expires"] == "300"
    assert params["X-Amz-Credential"].startswith("testing/")
    # The route's cache_control reaches the browser through S3's response, not the 302.
    assert params["response-cache-control"] == "private, max-age=300"

    async with aiohttp.ClientSession() as plain, plain.get(location) as fetched:
        assert fetched.status == 200
        assert await fetched.read() == s3.photo


async def test_redirect_carries_a_safe_download_filename(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get("/admin/links/q4.pdf", headers=ADMIN, allow_redirects=False)
    assert response.status == 302
    params = verify_presigned_url(response.headers["Location"], secret_key="testing")
    assert params["X-Amz-Expires"] == "60"
    assert unquote(params["response-content-disposition"]) == (
        "attachment; filename=\"q4.pdf\"; filename*=UTF-8''q4.pdf"
    )
    async with aiohttp.ClientSession() as plain, plain.get(response.headers["Location"]) as got:
        assert got.status == 200
        assert got.headers["Content-Disposition"].startswith("attachment;")
        assert await got.read() == s3.report


async def test_head_on_a_redirect_route_gets_a_presigned_head(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.head("/photos/42", headers=ALICE, allow_redirects=False)
    assert response.status == 302
    location = response.headers["Location"]
    verify_presigned_url(location, secret_key="testing", method="HEAD")
    async with aiohttp.ClientSession() as plain, plain.head(location) as fetched:
        assert fetched.status == 200
        assert fetched.headers["Content-Length"] == str(len(s3.photo))


async def test_tampered_url_does_not_verify(proxy) -> None:
    client = await proxy()
    response = await client.get("/photos/42", headers=ALICE, allow_redirects=False)
    tampered = response.headers["Location"].replace("/42/", "/43/")
    try:
        verify_presigned_url(tampered, secret_key="testing")
    except AssertionError:
        return
    raise AssertionError("a URL for another key must not verify")


async def test_redirect_is_refused_without_a_token(proxy) -> None:
    client = await proxy()
    response = await client.get("/photos/42", allow_redirects=False)
    assert response.status == 401
    assert "Location" not in response.headers


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/json", True),
        ("text/html, application/json;q=0.5", True),
        ("application/json;q=0", False),
        ("application/json; Q = 0.0000", False),
        ("application/json;q=0.", False),
        ("*/*", False),
        (None, False),
    ],
)
def test_wants_json_reads_any_spelling_of_zero_quality(accept: str | None, expected: bool) -> None:
    from proxy.delivery import wants_json

    assert wants_json(accept) is expected
