"""Authentication and authorization over real HTTP, with an injected clock for time checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .conftest import SECRET, Clock, S3Objects, bearer, config_dict, make_token


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_no_token_is_401_with_bearer_challenge(proxy) -> None:
    client = await proxy()
    response = await client.get("/stream/photos/42")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert await response.json() == {"error": "authentication required"}


@pytest.mark.parametrize(
    "token",
    [
        make_token(key="wrong-secret-" + "y" * 40),
        _b64({"alg": "none", "typ": "JWT"}) + "." + _b64({"sub": "alice", "exp": 2**40}) + ".",
        "not-a-jwt",
        make_token(ttl=-3600),
    ],
    ids=["bad-signature", "alg-none", "garbage", "expired"],
)
async def test_invalid_tokens_are_401(proxy, token: str) -> None:
    client = await proxy()
    response = await client.get("/stream/photos/42", headers=bearer(token))
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_wrong_algorithm_is_401(proxy) -> None:
    client = await proxy()
    token = jwt.encode({"sub": "alice", "exp": 2**40}, SECRET + "0" * 20, algorithm="HS512")
    response = await client.get("/stream/photos/42", headers=bearer(token))
    assert response.status == 401


async def test_hs_token_signed_with_the_public_key_is_401(proxy, s3: S3Objects, tmp_path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(pem)
    client = await proxy(
        config_dict(
            s3.endpoint,
            auth={"algorithms": ["HS256", "RS256"], "public_key_file": str(key_file)},
        )
    )
    now = int(time.time())
    good = jwt.encode({"sub": "alice", "iat": now, "exp": now + 60}, private, algorithm="RS256")
    assert (await client.get("/stream/photos/42", headers=bearer(good))).status == 200
    forged_payload = (
        _b64({"alg": "HS256", "typ": "JWT"}) + "." + _b64({"sub": "alice", "exp": 2**40})
    )
    signature = hmac.new(pem, forged_payload.encode(), hashlib.sha256).digest()
    forged = forged_payload + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    response = await client.get("/stream/photos/42", headers=bearer(forged))
    assert response.status == 401


async def test_expiry_honours_leeway_with_an_injected_clock(proxy, s3: S3Objects) -> None:
    clock = Clock(1_900_000_000)
    client = await proxy(config_dict(s3.endpoint, auth={"leeway": 30}), clock=clock)
    token = bearer(make_token(now=clock.now, ttl=60))
    assert (await client.get("/stream/photos/42", headers=token)).status == 200
    clock.now += 60 + 29  # expired, but inside the leeway
    assert (await client.get("/stream/photos/42", headers=token)).status == 200
    clock.now += 1
    assert (await client.get("/stream/photos/42", headers=token)).status == 401


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        ({"iss": "https://idp.example", "aud": "files"}, 200),
        ({"iss": "https://evil.example", "aud": "files"}, 401),
        ({"iss": "https://idp.example", "aud": "other"}, 401),
        ({"aud": "files"}, 401),
    ],
)
async def test_issuer_and_audience_are_checked(proxy, s3: S3Objects, claims, status) -> None:
    data = config_dict(s3.endpoint, auth={"issuer": "https://idp.example", "audience": "files"})
    client = await proxy(data)
    response = await client.get("/stream/photos/42", headers=bearer(make_token(**claims)))
    assert response.status == status


async def test_valid_token_failing_the_rule_is_403(proxy) -> None:
    client = await proxy()
    response = await client.get(
        "/admin/exports/q4.pdf", headers=bearer(make_token("bob", role="employee"))
    )
    assert response.status == 403
    assert await response.json() == {"error": "forbidden"}


async def test_rule_matches_by_membership(proxy, s3: S3Objects) -> None:
    client = await proxy()
    roles = ["employee", "admin"]
    response = await client.get("/admin/exports/q4.pdf", headers=bearer(make_token(role=roles)))
    assert response.status == 200
    assert await response.read() == s3.report


async def test_a_space_separated_role_is_not_a_list(proxy, s3: S3Objects) -> None:
    # Only auth.list_claims (default: scope) are split: `role: "guest admin"` is no admin.
    client = await proxy()
    token = bearer(make_token(role="guest admin"))
    assert (await client.get("/admin/exports/q4.pdf", headers=token)).status == 403


async def test_cookie_and_query_sources(proxy, s3: S3Objects) -> None:
    client = await proxy()
    token = make_token("alice")
    by_cookie = await client.get("/stream/photos/42", headers={"Cookie": f"access_token={token}"})
    assert by_cookie.status == 200
    by_query = await client.get("/stream/photos/42", params={"token": token})
    assert by_query.status == 200
    assert await by_query.read() == s3.photo


async def test_first_configured_source_wins(proxy) -> None:
    client = await proxy()
    good, bad = make_token("alice"), "garbage"
    header_first = await client.get(
        "/stream/photos/42",
        headers={"Authorization": f"Bearer {bad}", "Cookie": f"access_token={good}"},
    )
    assert header_first.status == 401
    cookie_before_query = await client.get(
        "/stream/photos/42", headers={"Cookie": f"access_token={good}"}, params={"token": bad}
    )
    assert cookie_before_query.status == 200


async def test_key_needing_a_missing_claim_is_403(proxy) -> None:
    client = await proxy()
    now = int(time.time())
    token = jwt.encode({"iat": now, "exp": now + 60}, SECRET, algorithm="HS256")  # no `sub`
    response = await client.get("/me/notes.txt", headers=bearer(token))
    assert response.status == 403


async def test_sub_with_a_slash_cannot_escape_its_prefix(proxy) -> None:
    client = await proxy()
    response = await client.get("/me/notes.txt", headers=bearer(make_token("alice/../bob")))
    assert response.status == 403
