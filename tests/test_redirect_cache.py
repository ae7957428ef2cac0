"""Cacheable redirects, lifetimes, JSON and batch signing, and delivery: auto — over real HTTP.

moto serves presigned URLs without checking them, so every URL here is also verified by
recomputing its SigV4 signature and checking its validity window at the test's clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import pytest

from .conftest import SECRET, Clock, S3Objects, bearer, config_dict, make_token
from .fakes import FakeStorage
from .sigv4 import verify_presigned_url

WINDOW = 3600
T0 = 1_900_000_000 // WINDOW * WINDOW  # the start of a stable window, far from "now"


def _at(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.now, UTC)


async def _location(client: Any, path: str, token: str, **kw: Any) -> aiohttp.ClientResponse:
    response: aiohttp.ClientResponse = await client.get(
        path, headers=bearer(token), allow_redirects=False, **kw
    )
    assert response.status == 302, await response.text()
    return response


async def test_same_url_within_a_window_and_a_new_one_in_the_next(proxy, s3: S3Objects) -> None:
    clock = Clock(T0 + 10)
    client = await proxy(config_dict(s3.endpoint), clock=clock)
    token = make_token(now=clock.now, ttl=10 * WINDOW)

    first = (await _location(client, "/stable/photos/42", token)).headers["Location"]
    clock.now = T0 + WINDOW - 1
    second = (await _location(client, "/stable/photos/42", token)).headers["Location"]
    assert first == second
    params = verify_presigned_url(second, secret_key="testing", now=_at(clock))
    assert params["X-Amz-Date"] == datetime.fromtimestamp(T0, UTC).strftime("%Y%m%dT%H%M%SZ")
    assert params["X-Amz-Expires"] == str(WINDOW + 300)

    clock.now = T0 + WINDOW
    third = (await _location(client, "/stable/photos/42", token)).headers["Location"]
    assert third != second
    verify_presigned_url(third, secret_key="testing", now=_at(clock))


async def test_stable_redirect_is_cacheable_until_shortly_before_the_url_dies(
    proxy, s3: S3Objects
) -> None:
    clock = Clock(T0 + 1000)
    client = await proxy(config_dict(s3.endpoint), clock=clock)
    response = await _location(client, "/stable/photos/42", make_token(now=clock.now, ttl=86400))
    cache = response.headers["Cache-Control"]
    assert cache.startswith("private, max-age=")
    max_age = int(cache.removeprefix("private, max-age="))
    valid_until = T0 + WINDOW + 300
    assert 0 < max_age <= valid_until - clock.now - 5
    # the URL is still valid at the last moment the browser may reuse the cached redirect
    params = verify_presigned_url(
        response.headers["Location"],
        secret_key="testing",
        now=datetime.fromtimestamp(clock.now + max_age, UTC),
    )
    assert unquote(params["response-cache-control"]) == "private, max-age=3600"
    async with aiohttp.ClientSession() as plain, plain.get(response.headers["Location"]) as got:
        assert await got.read() == s3.photo
        assert got.headers["Cache-Control"] == "private, max-age=3600"


async def test_expired_url_no_longer_verifies(proxy, s3: S3Objects) -> None:
    clock = Clock(T0)
    client = await proxy(config_dict(s3.endpoint), clock=clock)
    location = (await _location(client, "/photos/42", make_token(now=T0))).headers["Location"]
    verify_presigned_url(location, secret_key="testing", now=datetime.fromtimestamp(T0 + 299, UTC))
    with pytest.raises(AssertionError, match="not valid"):
        verify_presigned_url(
            location, secret_key="testing", now=datetime.fromtimestamp(T0 + 300, UTC)
        )


async def test_url_expiry_is_clamped_to_the_token_exp(proxy, s3: S3Objects) -> None:
    clock = Clock(T0 + 10)
    client = await proxy(config_dict(s3.endpoint), clock=clock)
    token = make_token(now=clock.now, ttl=120)
    for path in ("/photos/42", "/stable/photos/42"):
        params = verify_presigned_url(
            (await _location(client, path, token)).headers["Location"], secret_key="testing"
        )
        signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert signed_at.timestamp() + int(params["X-Amz-Expires"]) == clock.now + 120


async def test_token_inside_its_leeway_gets_no_dead_link(proxy, s3: S3Objects) -> None:
    clock = Clock(T0)
    client = await proxy(config_dict(s3.endpoint), clock=clock)
    token = make_token(now=T0 - 100, ttl=90)  # expired 10 s ago: accepted by the 30 s leeway
    response = await client.get("/photos/42", headers=bearer(token), allow_redirects=False)
    assert response.status == 401


async def test_download_name_survives_the_redirect_without_injection(proxy, s3: S3Objects) -> None:
    client = await proxy()
    odd = s3.odd_name_key.removeprefix("exports/")
    response = await _location(
        client, "/admin/links/" + quote(odd, safe=""), make_token(role="admin")
    )
    verify_presigned_url(response.headers["Location"], secret_key="testing")
    async with aiohttp.ClientSession() as plain, plain.get(response.headers["Location"]) as got:
        assert got.status == 200
        assert await got.read() == s3.report
        header = got.headers["Content-Disposition"]
    assert header == (
        'attachment; filename="we_ird_ name_x e.pdf"; '
        "filename*=UTF-8''we%22ird%3B%20name%3Dx%20%C3%A9.pdf"
    )
    assert not any(c in header for c in "\r\n\x00")


async def test_public_endpoint_is_what_urls_are_signed_for(proxy, s3: S3Objects) -> None:
    data = config_dict(s3.endpoint, s3={"public_endpoint_url": "https://files.example.com"})
    client = await proxy(data)
    location = (await _location(client, "/photos/42", make_token())).headers["Location"]
    assert location.startswith("https://files.example.com/hr-private/employees/42/photo.jpg?")
    verify_presigned_url(location, secret_key="testing")


async def test_temporary_credentials_travel_in_the_url(
    proxy, s3: S3Objects, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-value")
    client = await proxy()
    location = (await _location(client, "/photos/42", make_token())).headers["Location"]
    params = verify_presigned_url(location, secret_key="testing")
    assert params["X-Amz-Security-Token"] == "session-token-value"


async def test_url_is_clamped_to_credentials_that_expire(proxy) -> None:
    clock = Clock(T0 + 10)
    fake = FakeStorage()
    fake.signing_credentials = fake.signing_credentials.__class__(
        "ASIAFAKE", "secret", "token", expires_at=T0 + 200
    )
    client = await proxy(config_dict(), storage=fake, clock=clock)
    location = (await _location(client, "/stable/photos/42", make_token(now=clock.now))).headers[
        "Location"
    ]
    assert location.endswith(f"X-Amz-Date={T0}&X-Amz-Expires=200")
    clock.now = T0 + 200
    response = await client.get(
        "/photos/42", headers=bearer(make_token(now=clock.now)), allow_redirects=False
    )
    assert response.status == 502


# JSON answers and the batch API


async def test_accept_json_gets_the_url_instead_of_a_redirect(proxy, s3: S3Objects) -> None:
    clock = Clock(T0 + 5)
    client = await proxy(config_dict(s3.endpoint), clock=clock)
    response = await client.get(
        "/photos/42",
        headers={**bearer(make_token(now=clock.now)), "Accept": "application/json"},
        allow_redirects=False,
    )
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"url", "expires_at"}
    assert body["expires_at"] == datetime.fromtimestamp(T0 + 5 + 300, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    verify_presigned_url(body["url"], secret_key="testing", now=_at(clock))
    assert "Accept" in response.headers["Vary"]
    not_json = await client.get(
        "/photos/42",
        headers={**bearer(make_token(now=clock.now)), "Accept": "application/json;q=0, */*"},
        allow_redirects=False,
    )
    assert not_json.status == 302


async def _sign(client: Any, body: Any, token: str | None = None, **kw: Any) -> Any:
    headers = bearer(token) if token else {}
    return await client.post("/_sign", json=body, headers=headers, **kw)


async def test_batch_signs_a_page_with_mixed_answers(proxy, s3: S3Objects) -> None:
    clock = Clock(T0 + 5)
    client = await proxy(config_dict(s3.endpoint), clock=clock)
    paths = [
        "/stable/photos/42",
        "/photos/43",
        "/admin/links/q4.pdf",
        "/nowhere",
        "/stream/photos/42",
        "/photos/a%2Fb",
        "relative",
    ]
    token = make_token(now=clock.now, ttl=10 * WINDOW)
    response = await _sign(client, {"paths": paths}, token)
    assert response.status == 200
    results = (await response.json())["results"]
    assert [r["path"] for r in results] == paths
    photo, other, admin, nowhere, streamed, unsafe, relative = results
    verify_presigned_url(photo["url"], secret_key="testing", now=_at(clock))
    assert photo["expires_at"] == datetime.fromtimestamp(T0 + WINDOW + 300, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert "/hr-private/employees/43/photo.jpg?" in other["url"]
    assert admin == {"path": "/admin/links/q4.pdf", "status": 403, "error": "forbidden"}
    assert nowhere == {"path": "/nowhere", "status": 404, "error": "not found"}
    assert streamed == {"path": "/stream/photos/42", "url": "/stream/photos/42", "expires_at": None}
    assert (unsafe["status"], relative["status"]) == (400, 404)
    # the same page signed again in the same window gives the same, cacheable URLs
    again = await (await _sign(client, {"paths": paths[:1]}, token)).json()
    assert again["results"][0]["url"] == photo["url"]


async def test_batch_without_a_token_answers_per_path(proxy) -> None:
    client = await proxy()
    response = await _sign(client, {"paths": ["/photos/42", "/public/42"]})
    assert response.status == 200
    results = (await response.json())["results"]
    assert results[0]["status"] == 401
    assert results[1]["url"] == "/public/42"


async def test_batch_with_a_bad_token_is_401(proxy) -> None:
    client = await proxy()
    response = await _sign(client, {"paths": ["/photos/42"]}, "garbage")
    assert response.status == 401


@pytest.mark.parametrize(
    ("body", "status"),
    [({"paths": "/photos/42"}, 400), ({"paths": [1, 2]}, 400), ([], 400), ({}, 400)],
)
async def test_batch_refuses_malformed_bodies(proxy, body: Any, status: int) -> None:
    client = await proxy()
    response = await _sign(client, body, make_token())
    assert response.status == status
    assert set(await response.json()) == {"error"}


async def test_batch_refuses_non_json(proxy) -> None:
    client = await proxy()
    not_json = await client.post(
        "/_sign",
        data=b"{nope",
        headers={**bearer(make_token()), "Content-Type": "application/json"},
    )
    assert not_json.status == 400
    form = await client.post("/_sign", data={"paths": "/photos/42"}, headers=bearer(make_token()))
    assert form.status == 415
    get = await client.get("/_sign", headers=bearer(make_token()))
    assert (get.status, get.headers["Allow"]) == (405, "POST")


async def test_batch_size_is_capped(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint, sign_api={"max_paths": 3}))
    ok = await _sign(client, {"paths": ["/photos/1"] * 3}, make_token())
    assert ok.status == 200
    too_many = await _sign(client, {"paths": ["/photos/1"] * 4}, make_token())
    assert too_many.status == 413
    assert await too_many.json() == {"error": "at most 3 paths per request"}


async def test_default_batch_cap_is_1000(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await _sign(client, {"paths": ["/photos/1"] * 1001}, make_token())
    assert response.status == 413


# delivery: auto


async def test_auto_streams_small_objects_and_redirects_large_ones(proxy, s3: S3Objects) -> None:
    client = await proxy()
    token = make_token()
    small = await client.get("/auto/q4.pdf", headers=bearer(token), allow_redirects=False)
    assert small.status == 200
    assert await small.read() == s3.report
    large = await client.get("/auto/big.bin", headers=bearer(token), allow_redirects=False)
    assert large.status == 302
    verify_presigned_url(large.headers["Location"], secret_key="testing")
    async with aiohttp.ClientSession() as plain, plain.get(large.headers["Location"]) as got:
        assert await got.read() == s3.big


async def test_auto_caches_metadata_for_its_ttl(proxy) -> None:
    clock = Clock(T0)
    fake = FakeStorage(
        objects={
            ("reports", "exports/a.bin"): b"x" * 10,
            ("reports", "exports/b.bin"): b"x" * (2 * 1024 * 1024),
        }
    )
    client = await proxy(config_dict(metadata_cache={"ttl": 30}), storage=fake, clock=clock)
    token = bearer(make_token(now=T0, ttl=3600))
    for _ in range(3):
        assert (await client.get("/auto/a.bin", headers=token)).status == 200
        large = await client.get("/auto/b.bin", headers=token, allow_redirects=False)
        assert large.status == 302
    heads = [call for call in fake.calls if call[0] == "head"]
    assert len(heads) == 2  # one per object, then served from the cache
    clock.now += 30
    await client.get("/auto/a.bin", headers=token)
    assert len([call for call in fake.calls if call[0] == "head"]) == 3


async def test_auto_on_a_missing_object_is_404(proxy) -> None:
    client = await proxy()
    response = await client.get("/auto/missing.bin", headers=bearer(make_token()))
    assert response.status == 404


def test_secret_is_long_enough_for_these_tests() -> None:
    assert len(SECRET) >= 32


async def test_stable_urls_are_signed_once_per_window(proxy) -> None:
    clock = Clock(T0 + 10)
    fake = FakeStorage()
    client = await proxy(config_dict(), storage=fake, clock=clock)
    token = make_token(now=clock.now, ttl=10 * WINDOW)
    urls = set()
    for _ in range(3):
        urls.add((await _location(client, "/stable/photos/42", token)).headers["Location"])
    assert len(urls) == 1
    assert [c for c in fake.calls if c[0] == "presign"] == [
        ("presign", "hr-private", "employees/42/photo.jpg")
    ]
    clock.now += WINDOW
    await _location(client, "/stable/photos/42", token)
    assert len([c for c in fake.calls if c[0] == "presign"]) == 2


async def test_a_remembered_link_is_one_of_exactly_its_method_key_and_overrides() -> None:
    """The link cache's key holds the overrides as the Redirect remembers them per key: a
    GET's link is never handed to a HEAD (which carries none), nor one key's to another,
    and the remembered form keys the same entry as the overrides themselves."""
    from proxy.config import RouteSettings
    from proxy.delivery.redirect import LinkCache, _items, sign_link
    from proxy.request import ObjectRef

    storage = FakeStorage()
    settings = RouteSettings.model_validate(
        {
            "name": "r",
            "match": "/r/{k}",
            "bucket": "bkt",
            "key": "{k}",
            "delivery": "redirect",
            "access": "authenticated",
            "ttl": 300,
            "stable": 600,
        }
    )
    cache = LinkCache()
    one, two = ObjectRef("bkt", "one.jpg"), ObjectRef("bkt", "two.jpg")
    shown = {"Content-Disposition": 'inline; filename="one.jpg"'}

    async def sign(method: str, ref: ObjectRef, overrides: dict[str, str], items: Any) -> str:
        link = await sign_link(
            storage, settings, method, ref, overrides, T0 + 5, None, cache, None, items
        )
        return link.url

    await sign("GET", one, shown, _items(shown))
    await sign("GET", one, shown, None)  # computed or remembered: one entry
    assert (cache.hits, cache.misses) == (1, 1)
    await sign("HEAD", one, shown, _items(shown))  # a HEAD URL carries no overrides
    other = {"Content-Disposition": 'inline; filename="two.jpg"'}
    await sign("GET", two, other, _items(other))
    await sign("GET", one, {}, ())  # other overrides: another URL
    assert (cache.hits, cache.misses) == (1, 4)
    await sign("HEAD", one, {}, ())  # ...but a HEAD's is the HEAD's above
    assert (cache.hits, cache.misses) == (2, 4)
