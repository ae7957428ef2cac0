"""delivery: cloudfront over real HTTP: 302s to signed URLs (byte for byte botocore's), signed
cookies for a scope, the same lifetimes and caching as redirect, the JSON answer and the sign
API; and a gallery that a stand-in edge (not a CDN) then serves with the cookies alone.
Signatures are checked with the PUBLIC key or against botocore, never with our signer."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import boto3
import pytest
from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from proxy.cloudfront import VerifyingKey
from proxy.demo.cloudfront_standin import EdgeOrigin, StandInEdge

from .cfkeys import DOMAIN, KEY_ID, cloudfront_config, private_pem, rsa_key, write_key
from .conftest import Clock, S3Objects, bearer, make_token

SHA1 = hashes.SHA1()  # noqa: S303 - CloudFront's documented default hash
NOW = 1_767_000_123.0  # 123 s into a 3600 s window
WINDOW = 1_767_000_000 - 1_767_000_000 % 3600
ORIGIN = f"https://{DOMAIN}"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write_key(tmp_path, "cf.pem", private_pem(rsa_key()))


def _token(ttl: int = 3600, **claims: Any) -> dict[str, str]:
    return bearer(make_token("alice", ttl=ttl, now=NOW, **claims))


def _decode(text: str) -> bytes:
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"))


def _canned(url: str, expires: int) -> bytes:
    return (
        '{"Statement":[{"Resource":"' + url + '","Condition":{"DateLessThan":'
        '{"AWS:EpochTime":' + str(expires) + "}}}]}"
    ).encode()


def _botocore(url: str, expires: int) -> str:
    def sign(message: bytes) -> bytes:
        return rsa_key().sign(message, padding.PKCS1v15(), SHA1)

    when = datetime.fromtimestamp(expires, UTC)
    return str(CloudFrontSigner(KEY_ID, sign).generate_presigned_url(url, date_less_than=when))


def _cookies(response: Any) -> dict[str, str]:
    """Set-Cookie values by cookie name, whole (attributes included)."""
    return {value.split("=", 1)[0]: value for value in response.headers.getall("Set-Cookie", [])}


async def _start(proxy: Any, key_file: Path, clock: Clock, endpoint: str, **section: Any) -> Any:
    return await proxy(cloudfront_config(key_file, endpoint, **section), clock=clock)


async def test_a_signed_url_is_botocores_and_verifies_with_the_public_key(
    proxy: Any, key_file: Path, s3: S3Objects
) -> None:
    client = await _start(proxy, key_file, Clock(NOW), s3.endpoint)
    response = await client.get("/cdn/photos/42", headers=_token(), allow_redirects=False)
    assert response.status == 302
    location = response.headers["Location"]
    url, _, query = location.partition("?")
    assert url == f"{ORIGIN}/employees/42/photo.jpg"
    params = dict(parse_qsl(query))
    # stable: 3600, ttl: 300: signed for the window, valid ttl past its end
    expires = WINDOW + 3600 + 300
    assert params["Expires"] == str(expires)
    assert location == _botocore(url, expires)
    signature = _decode(params["Signature"])
    rsa_key().public_key().verify(signature, _canned(url, expires), padding.PKCS1v15(), SHA1)
    # the same Cache-Control and Vary as a stable redirect
    assert response.headers["Cache-Control"].startswith("private, max-age=")
    assert response.headers["Vary"] == "Accept, Authorization, Cookie"
    assert "Set-Cookie" not in response.headers


async def test_a_stable_url_repeats_within_its_window_only(
    proxy: Any, key_file: Path, s3: S3Objects
) -> None:
    clock = Clock(NOW)
    client = await _start(proxy, key_file, clock, s3.endpoint)

    async def location() -> str:
        response = await client.get("/cdn/photos/42", headers=_token(7200), allow_redirects=False)
        return str(response.headers["Location"])

    first = await location()
    clock.now = NOW + 1000
    assert await location() == first
    clock.now = WINDOW + 3600 + 5  # the next window
    later = await location()
    assert later != first
    assert dict(parse_qsl(urlsplit(later).query))["Expires"] == str(WINDOW + 7200 + 300)


async def test_expiry_never_outlives_the_token(proxy: Any, key_file: Path, s3: S3Objects) -> None:
    client = await _start(proxy, key_file, Clock(NOW), s3.endpoint)
    response = await client.get("/cdn/photos/42", headers=_token(ttl=90), allow_redirects=False)
    location = response.headers["Location"]
    expires = int(NOW) + 90
    assert dict(parse_qsl(urlsplit(location).query))["Expires"] == str(expires)
    assert location == _botocore(location.split("?")[0], expires)
    # cookies too: the policy's DateLessThan is the token's exp
    response = await client.get(
        "/cdn/albums/trip/1.jpg", headers=_token(ttl=90), allow_redirects=False
    )
    policy = json.loads(_decode(_cookies(response)["CloudFront-Policy"].split(";")[0][18:]))
    condition = policy["Statement"][0]["Condition"]
    assert condition == {"DateLessThan": {"AWS:EpochTime": expires}}


async def test_a_token_past_exp_inside_the_leeway_gets_401_not_a_dead_link(
    proxy: Any, key_file: Path, s3: S3Objects
) -> None:
    client = await _start(proxy, key_file, Clock(NOW + 10), s3.endpoint)
    for path in ("/cdn/photos/42", "/cdn/albums/trip/1.jpg"):
        response = await client.get(path, headers=_token(ttl=5), allow_redirects=False)
        assert response.status == 401
        assert "Set-Cookie" not in response.headers


async def test_cookies_for_the_scope_verify_with_the_public_key(
    proxy: Any, key_file: Path, s3: S3Objects
) -> None:
    client = await _start(proxy, key_file, Clock(NOW), s3.endpoint, cookie_domain="example.com")
    response = await client.get("/cdn/albums/trip/1.jpg", headers=_token(), allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == f"{ORIGIN}/albums/trip/1.jpg"  # unsigned
    assert response.headers["Cache-Control"] == "no-store"  # no stable, as for redirect
    cookies = _cookies(response)
    assert list(cookies) == ["CloudFront-Policy", "CloudFront-Signature", "CloudFront-Key-Pair-Id"]
    for value in cookies.values():
        assert value.split("; ")[1:] == [
            "Domain=example.com",
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
        ]
    value = {name: header.split(";")[0].split("=", 1)[1] for name, header in cookies.items()}
    policy = _decode(value["CloudFront-Policy"])
    resource = f"{ORIGIN}/albums/trip/*"
    assert json.loads(policy) == {
        "Statement": [
            {"Resource": resource, "Condition": {"DateLessThan": {"AWS:EpochTime": int(NOW) + 600}}}
        ]
    }
    signature = _decode(value["CloudFront-Signature"])
    rsa_key().public_key().verify(signature, policy, padding.PKCS1v15(), SHA1)
    assert value["CloudFront-Key-Pair-Id"] == KEY_ID


async def test_a_star_in_a_path_is_a_character_not_a_wider_scope(
    proxy: Any, key_file: Path, s3: S3Objects
) -> None:
    client = await _start(proxy, key_file, Clock(NOW), s3.endpoint)
    response = await client.get("/cdn/albums/%2A/x.jpg", headers=_token(), allow_redirects=False)
    value = _cookies(response)["CloudFront-Policy"].split(";")[0].split("=", 1)[1]
    resource = json.loads(_decode(value))["Statement"][0]["Resource"]
    assert resource == f"{ORIGIN}/albums/%2A/*"
    assert response.headers["Location"] == f"{ORIGIN}/albums/%2A/x.jpg"


async def test_nothing_is_signed_for_a_caller_the_rule_refuses(
    proxy: Any, key_file: Path, s3: S3Objects
) -> None:
    data = cloudfront_config(key_file, s3.endpoint)
    data["routes"][-1]["access"] = {"claims": {"role": "editor"}}
    client = await proxy(data, clock=Clock(NOW))
    for headers in ({}, _token()):
        response = await client.get(
            "/cdn/albums/trip/1.jpg", headers=headers, allow_redirects=False
        )
        assert response.status in (401, 403)
        assert "Set-Cookie" not in response.headers and "Location" not in response.headers


async def test_json_answers_as_for_redirect(proxy: Any, key_file: Path, s3: S3Objects) -> None:
    client = await _start(proxy, key_file, Clock(NOW), s3.endpoint)
    accept = {**_token(), "Accept": "application/json"}
    response = await client.get("/cdn/photos/42", headers=accept)
    assert response.status == 200
    body = await response.json()
    assert body["url"].startswith(f"{ORIGIN}/employees/42/photo.jpg?Expires=")
    assert body["expires_at"] == datetime.fromtimestamp(WINDOW + 3900, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert set(body) == {"url", "expires_at"}
    response = await client.get("/cdn/albums/trip/1.jpg", headers=accept)
    body = await response.json()
    assert body == {
        "url": f"{ORIGIN}/albums/trip/1.jpg",
        "expires_at": datetime.fromtimestamp(int(NOW) + 600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cookie_scope": f"{ORIGIN}/albums/trip/*",
    }
    assert len(_cookies(response)) == 3


async def test_head_gets_the_same_302(proxy: Any, key_file: Path, s3: S3Objects) -> None:
    client = await _start(proxy, key_file, Clock(NOW), s3.endpoint)
    get = await client.get("/cdn/photos/42", headers=_token(), allow_redirects=False)
    head = await client.head("/cdn/photos/42", headers=_token(), allow_redirects=False)
    assert head.status == 302
    assert head.headers["Location"] == get.headers["Location"]


async def test_the_sign_api_sets_one_scope_and_refuses_another(
    proxy: Any, key_file: Path, s3: S3Objects
) -> None:
    client = await _start(proxy, key_file, Clock(NOW), s3.endpoint)
    paths = [
        "/cdn/photos/42",
        "/cdn/albums/trip/1.jpg",
        "/cdn/albums/trip/2.jpg",
        "/cdn/albums/work/1.jpg",
    ]
    response = await client.post("/_sign", json={"paths": paths}, headers=_token())
    assert response.status == 200
    photo, one, two, other = (await response.json())["results"]
    assert photo["url"].startswith(f"{ORIGIN}/employees/42/photo.jpg?Expires=")
    assert "cookie_scope" not in photo
    for entry, name in ((one, "1.jpg"), (two, "2.jpg")):
        assert entry["url"] == f"{ORIGIN}/albums/trip/{name}"
        assert entry["cookie_scope"] == f"{ORIGIN}/albums/trip/*"
    assert other["status"] == 409
    assert other["error"].startswith(f"another cookie scope ({ORIGIN}/albums/trip/*)")
    cookies = _cookies(response)
    assert len(cookies) == 3 and len(response.headers.getall("Set-Cookie")) == 3
    value = cookies["CloudFront-Policy"].split(";")[0].split("=", 1)[1]
    assert json.loads(_decode(value))["Statement"][0]["Resource"] == f"{ORIGIN}/albums/trip/*"


async def test_no_signature_or_cookie_reaches_a_log_line(
    proxy: Any, key_file: Path, s3: S3Objects, caplog: pytest.LogCaptureFixture
) -> None:
    client = await _start(proxy, key_file, Clock(NOW), s3.endpoint)
    caplog.set_level(logging.DEBUG)
    signed = await client.get("/cdn/photos/42", headers=_token(), allow_redirects=False)
    cookies = await client.get("/cdn/albums/trip/1.jpg", headers=_token(), allow_redirects=False)
    secrets = [dict(parse_qsl(urlsplit(signed.headers["Location"]).query))["Signature"]]
    secrets += [v.split(";")[0].split("=", 1)[1] for v in _cookies(cookies).values()][:2]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    access = [r for r in caplog.records if r.name == "proxy.access"]
    assert [json.loads(r.getMessage())["delivery"] for r in access] == ["cloudfront"] * 2
    for secret in secrets:
        assert secret[:24] not in logged


async def test_a_gallery_loads_from_the_edge_with_cookies_and_no_further_proxy_request(
    proxy: Any, aiohttp_server: Any, key_file: Path, s3: S3Objects
) -> None:
    """The gallery flow: one POST /_sign, then every image of the album straight from the
    (stand-in) edge with the cookies it set; the proxy sees nothing more. An image of another
    album is refused by the edge."""
    album = {f"albums/gallery/{n}.jpg": f"picture {n}".encode() for n in range(1, 7)}
    bucket = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    for key, body in album.items():
        bucket.put_object(Bucket="hr-private", Key=key, Body=body, ContentType="image/jpeg")
    trusted = {KEY_ID: VerifyingKey(KEY_ID, rsa_key().public_key())}
    edge = await aiohttp_server(
        StandInEdge(trusted, EdgeOrigin(s3.endpoint, "hr-private")).application()
    )
    origin = f"http://127.0.0.1:{edge.port}"
    data = cloudfront_config(key_file, s3.endpoint, domain=origin)
    data["metrics"] = {"enabled": True, "listen": "main", "path": "/_m", "access": "public"}
    client = await proxy(data)
    paths = [f"/cdn/albums/gallery/{n}.jpg" for n in range(1, 7)]

    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[origin])
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        # the page's one request to the proxy
        sign = str(client.make_url("/_sign"))
        token = bearer(make_token("alice"))
        async with browser.post(sign, json={"paths": paths}, headers=token) as answer:
            results = (await answer.json())["results"]
        before = await _proxy_requests(client)
        for entry, key in zip(results, album, strict=True):
            assert entry["url"] == f"{origin}/{key}"
            async with browser.get(entry["url"], allow_redirects=False) as image:
                assert image.status == 200, image.headers.get("X-Stand-In-Reason")
                assert await image.read() == album[key]
        assert await _proxy_requests(client) == before  # not one more request to the proxy
        async with browser.get(f"{origin}/employees/42/photo.jpg") as other:
            assert other.status == 403
            assert other.headers["X-Stand-In-Reason"].startswith("wildcard scope")
    async with aiohttp.ClientSession() as stranger, stranger.get(results[0]["url"]) as refused:
        assert refused.status == 403  # the URL alone opens nothing


async def _proxy_requests(client: Any) -> float:
    """Requests the proxy answered, its metrics' own excepted."""
    text = await (await client.get("/_m")).text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("proxy_requests_total{") and 'route="metrics"' not in line
    )


async def test_a_remembered_stable_url_is_never_one_another_key_signed(
    proxy: Any, key_file: Path, s3: S3Objects
) -> None:
    """Links are remembered across a reload (one LinkCache); a key file replaced under the
    same ID must not hand out the old key's URLs."""
    from proxy.cloudfront import Signer, SigningKey
    from proxy.delivery import CloudFront, LinkCache
    from proxy.request import ObjectRef, RequestContext

    from .conftest import build_config

    config = build_config(cloudfront_config(key_file, s3.endpoint))
    route = next(route for route in config.routes if route.name == "cdn-photos")
    links = LinkCache()
    context = RequestContext("GET", "/cdn/photos/42", "127.0.0.1")
    ref = ObjectRef("hr-private", "employees/42/photo.jpg")
    clock = Clock(NOW)
    urls = []
    for seed in (0, 3):
        signer = Signer(ORIGIN, SigningKey(KEY_ID, rsa_key(2048, seed)))
        urls.append(CloudFront(signer, clock, links, None).sign(context, route, ref).url)
    assert urls[0] != urls[1]
    url, _, query = urls[1].partition("?")
    signature = _decode(dict(parse_qsl(query))["Signature"])
    expires = int(dict(parse_qsl(query))["Expires"])
    rsa_key(2048, 3).public_key().verify(signature, _canned(url, expires), padding.PKCS1v15(), SHA1)
    assert links.hits == 0
    signer = Signer(ORIGIN, SigningKey(KEY_ID, rsa_key(2048, 3)))
    assert CloudFront(signer, clock, links, None).sign(context, route, ref).url == urls[1]
    assert links.hits == 1  # the same key: remembered, not signed again
