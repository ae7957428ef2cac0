"""Tokens from identity providers: a JWKS endpoint on loopback, rotation, outages, issuers."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .conftest import Clock, S3Objects, bearer, config_dict

T0 = 1_900_000_000


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        data: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**data, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        payload = {"sub": "alice", "iat": T0, "exp": T0 + 3600, **claims}
        return jwt.encode(
            payload, self.private, algorithm=self.alg, headers={"kid": self.kid, **headers}
        )


def new_key(alg: str = "RS256", kid: str | None = None) -> SigningKey:
    if alg.startswith(("RS", "PS")):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return SigningKey(kid or uuid.uuid4().hex[:8], alg, private)


@dataclass
class Provider:
    """A JWKS endpoint the test controls: its keys, whether it is up, and what it was asked."""

    keys: list[SigningKey] = field(default_factory=list)
    up: bool = True
    hits: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        if not self.up:
            return web.Response(status=503)
        return web.json_response({"keys": [key.jwk() for key in self.keys]})


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    state = Provider()
    app = web.Application()
    app.router.add_get("/{tail:.*}", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("/.well-known/jwks.json"))
    yield state
    await server.close()


def _jwks_config(s3: S3Objects, provider: Provider, **auth: Any) -> dict[str, Any]:
    settings = {
        "algorithms": ["RS256"],
        "jwks_url": provider.url,
        "issuer": "https://idp",
        "jwks": {"cache_ttl": 600, "min_refresh_interval": 60},
        **auth,
    }
    data = config_dict(s3.endpoint)
    data["auth"] = settings
    return data


async def _get(client: Any, token: str) -> int:
    response = await client.get("/stream/photos/42", headers=bearer(token))
    await response.read()
    status: int = response.status
    return status


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"])
async def test_tokens_signed_with_provider_keys(
    proxy, s3: S3Objects, provider: Provider, alg: str
) -> None:
    key = new_key(alg)
    provider.keys = [key]
    client = await proxy(_jwks_config(s3, provider, algorithms=[alg]), clock=Clock(T0))
    assert await _get(client, key.sign({"iss": "https://idp"})) == 200
    assert await _get(client, new_key(alg, kid=key.kid).sign({"iss": "https://idp"})) == 401


async def test_rotation_picks_up_a_new_kid(proxy, s3: S3Objects, provider: Provider) -> None:
    clock = Clock(T0)
    old, new = new_key(), new_key()
    provider.keys = [old]
    client = await proxy(_jwks_config(s3, provider), clock=clock)
    assert await _get(client, old.sign({"iss": "https://idp"})) == 200
    provider.keys = [old, new]
    clock.now += 61  # past the refresh interval
    assert await _get(client, new.sign({"iss": "https://idp"})) == 200
    assert len(provider.hits) == 2


async def test_forged_kids_cannot_hammer_the_provider(
    proxy, s3: S3Objects, provider: Provider
) -> None:
    clock = Clock(T0)
    key = new_key()
    provider.keys = [key]
    client = await proxy(_jwks_config(s3, provider), clock=clock)
    assert await _get(client, key.sign({"iss": "https://idp"})) == 200
    for kid in ("../../etc/passwd", "http://evil/x", *[uuid.uuid4().hex for _ in range(30)]):
        forged = SigningKey(kid, "RS256", key.private).sign({"iss": "https://idp"})
        assert await _get(client, forged) == 401
    assert len(provider.hits) == 1  # the first fetch only: refetches wait for the interval
    clock.now += 60
    forged = SigningKey("another", "RS256", key.private).sign({"iss": "https://idp"})
    assert await _get(client, forged) == 401
    assert len(provider.hits) == 2


async def test_provider_outage_keeps_serving_the_cached_keys(
    proxy, s3: S3Objects, provider: Provider
) -> None:
    clock = Clock(T0)
    key = new_key()
    provider.keys = [key]
    client = await proxy(_jwks_config(s3, provider), clock=clock)

    def token(n: int) -> str:  # a new token each time, so the key set is really consulted
        return key.sign({"iss": "https://idp", "exp": T0 + 7200, "jti": str(n)})

    assert await _get(client, token(1)) == 200
    provider.up = False
    clock.now += 601  # the cached set is stale and the refresh fails
    assert await _get(client, token(2)) == 200
    assert len(provider.hits) == 2
    provider.up = True
    clock.now += 61
    assert await _get(client, token(3)) == 200
    assert len(provider.hits) == 3


async def test_provider_down_from_the_start_is_401_not_500(
    proxy, s3: S3Objects, provider: Provider
) -> None:
    provider.up = False
    client = await proxy(_jwks_config(s3, provider), clock=Clock(T0))
    assert await _get(client, new_key().sign({"iss": "https://idp"})) == 401


async def test_jku_and_x5u_headers_are_never_fetched(
    proxy, s3: S3Objects, provider: Provider
) -> None:
    key, attacker = new_key(), new_key()
    provider.keys = [key]
    client = await proxy(_jwks_config(s3, provider), clock=Clock(T0))
    forged = attacker.sign(
        {"iss": "https://idp"},
        jku=provider.url.replace("jwks", "evil"),
        x5u=provider.url.replace("jwks", "x5u"),
    )
    assert await _get(client, forged) == 401
    assert all(hit == "/.well-known/jwks.json" for hit in provider.hits)


async def test_hs256_signed_with_the_provider_public_key_is_refused(
    proxy, s3: S3Objects, provider: Provider
) -> None:
    key = new_key()
    provider.keys = [key]
    client = await proxy(_jwks_config(s3, provider), clock=Clock(T0))
    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = jwt.utils.base64url_encode(
        b'{"alg":"HS256","typ":"JWT","kid":"%s"}' % key.kid.encode()
    )
    body = jwt.utils.base64url_encode(b'{"sub":"alice","iss":"https://idp","exp":%d}' % (T0 + 60))
    signature = hmac.new(pem, header + b"." + body, hashlib.sha256).digest()
    forged = b".".join([header, body, jwt.utils.base64url_encode(signature)]).decode()
    assert await _get(client, forged) == 401


async def test_several_issuers_each_with_their_own_keys(
    proxy, s3: S3Objects, provider: Provider
) -> None:
    idp_key = new_key()
    provider.keys = [idp_key]
    data = config_dict(s3.endpoint)
    data["auth"] = {
        "issuers": [
            {
                "issuer": "https://idp",
                "algorithms": ["RS256"],
                "jwks_url": provider.url,
                "audience": "files",
            },
            {"issuer": "internal", "algorithms": ["HS256"], "secret": "i" * 40},
        ]
    }
    for route in data["routes"]:
        if route["access"] != "public":
            route["issuers"] = ["https://idp", "internal"]
    client = await proxy(data, clock=Clock(T0))
    assert await _get(client, idp_key.sign({"iss": "https://idp", "aud": "files"})) == 200
    assert await _get(client, idp_key.sign({"iss": "https://idp", "aud": "other"})) == 401
    internal = jwt.encode(
        {"sub": "svc", "iss": "internal", "iat": T0, "exp": T0 + 60}, "i" * 40, algorithm="HS256"
    )
    assert await _get(client, internal) == 200
    # a token is checked only against its own issuer's keys
    assert await _get(client, idp_key.sign({"iss": "internal"})) == 401
    cross = jwt.encode(
        {"sub": "svc", "iss": "https://idp", "aud": "files", "exp": T0 + 60},
        "i" * 40,
        algorithm="HS256",
    )
    assert await _get(client, cross) == 401
    assert await _get(client, idp_key.sign({"iss": "https://unknown"})) == 401
