"""Unit tests for proxy.auth: token extraction, cookie parsing, verification and issuing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.auth import (
    MAX_TOKEN_BYTES,
    TokenVerifier,
    extract_token,
    issue_token,
    parse_cookie_header,
)
from proxy.config import AuthSettings, TokenSource
from proxy.errors import Unauthenticated

SECRET = "unit-test-secret-" + "s" * 48  # 65 bytes: long enough for every HS* algorithm
OTHER_SECRET = "another-secret-" + "o" * 48
NOW = 1_700_000_000

_PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = _PRIVATE_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()
PUBLIC_PEM = (
    _PRIVATE_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def run(awaitable: Any) -> Any:
    """Drive one coroutine: these unit tests need no running server."""
    return asyncio.run(awaitable)


def settings(**overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {"algorithms": ["HS256"], "secret": SECRET}
    values.update(overrides)
    return AuthSettings(**values)


def verifier(now: float = NOW, **overrides: Any) -> TokenVerifier:
    return TokenVerifier(settings(**overrides), clock=lambda: now)


def hs256(key: str = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    payload = {"sub": "alice", "iat": NOW, "exp": NOW + 300, **claims}
    return jwt.encode(payload, key, algorithm=algorithm)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """Build a JWS by hand (PyJWT refuses to sign some of the forgeries tested here)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{b64(signature)}"


def refused(check: TokenVerifier, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        run(check.verify(token))
    error = caught.value
    assert error.status == 401
    assert error.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    return error


# extract_token


DEFAULT = settings()


@pytest.mark.parametrize(
    ("headers", "cookies", "query", "found"),
    [
        ({"Authorization": "Bearer abc"}, {}, {}, ("header Authorization", "abc")),
        ({"Authorization": "bearer abc"}, {}, {}, ("header Authorization", "abc")),
        ({"Authorization": "BEARER abc"}, {}, {}, ("header Authorization", "abc")),
        ({"Authorization": "  Bearer   abc  "}, {}, {}, ("header Authorization", "abc")),
        ({}, {"access_token": "abc"}, {}, ("cookie access_token", "abc")),
        ({}, {}, {"token": "abc"}, ("query token", "abc")),
        ({}, {"access_token": " abc "}, {}, ("cookie access_token", "abc")),
        # first configured source present wins: header, then cookie, then query
        (
            {"Authorization": "Bearer h"},
            {"access_token": "c"},
            {"token": "q"},
            ("header Authorization", "h"),
        ),
        ({}, {"access_token": "c"}, {"token": "q"}, ("cookie access_token", "c")),
        # unusable Authorization values fall through to the next source
        (
            {"Authorization": "Basic dXNlcjpwdw=="},
            {"access_token": "c"},
            {},
            ("cookie access_token", "c"),
        ),
        ({"Authorization": "Bearer"}, {}, {"token": "q"}, ("query token", "q")),
        ({"Authorization": "Bearer   "}, {}, {"token": "q"}, ("query token", "q")),
        ({"Authorization": "abc"}, {}, {"token": "q"}, ("query token", "q")),
        ({"Authorization": ""}, {}, {"token": "q"}, ("query token", "q")),
        ({"Authorization": "Bearerabc"}, {}, {"token": "q"}, ("query token", "q")),
        # empty values are skipped
        ({}, {"access_token": ""}, {"token": "q"}, ("query token", "q")),
        ({}, {"access_token": "   "}, {"token": "q"}, ("query token", "q")),
        # other names are not sources
        ({"X-Token": "abc"}, {"token": "abc"}, {"access_token": "abc"}, None),
        ({}, {}, {"token": ""}, None),
        ({}, {}, {}, None),
    ],
)
def test_extract_token_default_sources(
    headers: dict[str, str],
    cookies: dict[str, str],
    query: dict[str, str],
    found: tuple[str, str] | None,
) -> None:
    assert extract_token(DEFAULT, headers, cookies, query) == found


def test_extract_token_follows_configured_order() -> None:
    config = settings(sources=[TokenSource(query="t"), TokenSource(cookie="session")])
    everything = ({"Authorization": "Bearer h"}, {"session": "c"}, {"t": "q"})
    assert extract_token(config, *everything) == ("query t", "q")
    assert extract_token(config, {"Authorization": "Bearer h"}, {"session": "c"}, {}) == (
        "cookie session",
        "c",
    )
    assert extract_token(config, {"Authorization": "Bearer h"}, {}, {}) is None


def test_extract_token_answers_each_config_from_its_own_sources() -> None:
    """The sources' plan is worked out once per config: another config (a reload) never
    walks the plan of the one before, however alike they look."""
    request = ({"Authorization": "Bearer h", "X-Token": "x"}, {"session": "c"}, {"t": "q"})
    first = settings(sources=[TokenSource(header="Authorization"), TokenSource(query="t")])
    second = settings(sources=[TokenSource(query="t"), TokenSource(header="Authorization")])
    third = settings(sources=[TokenSource(header="X-Token")])
    for _ in range(2):
        assert extract_token(first, *request) == ("header Authorization", "h")
        assert extract_token(second, *request) == ("query t", "q")
        assert extract_token(third, *request) == ("header X-Token", "x")
        assert extract_token(third, {"Authorization": "Bearer h"}, {}, {}) is None


def test_extract_token_custom_header_takes_the_raw_value() -> None:
    config = settings(sources=[TokenSource(header="X-Api-Token"), TokenSource(query="token")])
    assert extract_token(config, {"X-Api-Token": " abc "}, {}, {}) == ("header X-Api-Token", "abc")
    assert extract_token(config, {"X-Api-Token": "Bearer abc"}, {}, {}) == (
        "header X-Api-Token",
        "Bearer abc",
    )
    assert extract_token(config, {"X-Api-Token": ""}, {}, {"token": "q"}) == ("query token", "q")


# parse_cookie_header


@pytest.mark.parametrize(
    ("header", "cookies"),
    [
        (None, {}),
        ("", {}),
        ("access_token=abc", {"access_token": "abc"}),
        ("a=1; access_token=abc", {"a": "1", "access_token": "abc"}),
        ("a=1;access_token=abc", {"a": "1", "access_token": "abc"}),
        ('access_token="abc"', {"access_token": "abc"}),
        ("access_token=a.b-c_d", {"access_token": "a.b-c_d"}),
        # malformed headers give no cookies rather than an error
        ("garbage", {}),
        (";", {}),
        ("=;;", {}),
        ('x="unterminated; access_token=abc', {"x": '"unterminated', "access_token": "abc"}),
        ("a b=1", {"a b": "1"}),
    ],
)
def test_parse_cookie_header(header: str | None, cookies: dict[str, str]) -> None:
    assert parse_cookie_header(header) == cookies


@pytest.mark.parametrize(
    "header",
    ["a[0]=1; access_token=abc", "theme=dark mode; access_token=abc", "path=/; access_token=abc"],
)
def test_odd_cookie_from_another_app_does_not_hide_the_token(header: str) -> None:
    assert parse_cookie_header(header).get("access_token") == "abc"


# TokenVerifier: signatures and algorithms


def test_valid_hs256() -> None:
    claims = run(verifier().verify(hs256(role="admin")))
    assert claims == {"sub": "alice", "iat": NOW, "exp": NOW + 300, "role": "admin"}


def test_bad_signature() -> None:
    error = refused(verifier(), hs256(key=OTHER_SECRET))
    assert error.reason == "bad signature"


def test_tampered_payload_is_a_bad_signature() -> None:
    header, _, signature = hs256().split(".")
    payload = b64(json.dumps({"sub": "root", "iat": NOW, "exp": NOW + 300}).encode())
    assert refused(verifier(), f"{header}.{payload}.{signature}").reason == "bad signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_refused(alg: str) -> None:
    token = handmade({"alg": alg, "typ": "JWT"}, {"sub": "root", "exp": NOW + 300}, None)
    assert "not allowed" in refused(verifier(), token).reason


def test_header_without_alg_is_refused() -> None:
    token = handmade({"typ": "JWT"}, {"sub": "root", "exp": NOW + 300}, SECRET.encode())
    assert "not allowed" in refused(verifier(), token).reason


def test_algorithm_outside_the_allow_list_is_refused() -> None:
    token = hs256(algorithm="HS512")
    assert refused(verifier(), token).reason == "algorithm 'HS512' not allowed"
    assert run(verifier(algorithms=["HS512"]).verify(token))["sub"] == "alice"


def test_hs256_forged_with_the_public_key_as_secret_is_refused() -> None:
    payload = {"sub": "root", "role": "admin", "iat": NOW, "exp": NOW + 300}
    forged = handmade({"alg": "HS256", "typ": "JWT"}, payload, PUBLIC_PEM.encode())
    check = verifier(algorithms=["HS256", "RS256"], public_key=PUBLIC_PEM)
    assert refused(check, forged).reason == "bad signature"


def test_hs256_forged_with_public_key_when_no_secret_is_configured() -> None:
    payload = {"sub": "root", "iat": NOW, "exp": NOW + 300}
    forged = handmade({"alg": "HS256", "typ": "JWT"}, payload, PUBLIC_PEM.encode())
    check = verifier(algorithms=["HS256", "RS256"], secret=None, public_key=PUBLIC_PEM)
    assert refused(check, forged).reason == "no key configured for algorithm"


def test_rs256_valid_with_public_key() -> None:
    token = jwt.encode({"sub": "bob", "exp": NOW + 60}, PRIVATE_PEM, algorithm="RS256")
    check = verifier(algorithms=["RS256"], secret=None, public_key=PUBLIC_PEM)
    assert run(check.verify(token)) == {"sub": "bob", "exp": NOW + 60}
    both = verifier(algorithms=["HS256", "RS256"], public_key=PUBLIC_PEM)
    assert run(both.verify(token))["sub"] == "bob"
    assert run(both.verify(hs256()))["sub"] == "alice"


def test_rs256_signed_by_another_key_is_refused() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "bob", "exp": NOW + 60}, other, algorithm="RS256")
    check = verifier(algorithms=["RS256"], secret=None, public_key=PUBLIC_PEM)
    assert refused(check, token).reason == "bad signature"


def test_rs256_without_a_public_key_is_refused() -> None:
    token = jwt.encode({"sub": "bob", "exp": NOW + 60}, PRIVATE_PEM, algorithm="RS256")
    check = verifier(algorithms=["HS256", "RS256"])
    assert refused(check, token).reason == "no key configured for algorithm"


# TokenVerifier: time claims against the injected clock


@pytest.mark.parametrize(
    ("now", "accepted"),
    [
        (NOW + 299, True),
        (NOW + 300, True),  # expired, but within the 30 s leeway
        (NOW + 329, True),
        (NOW + 330, False),  # exp + leeway reached
        (NOW + 10_000, False),
    ],
)
def test_expiry_with_leeway(now: int, accepted: bool) -> None:
    check = verifier(now=now, leeway=30)
    token = hs256()
    if accepted:
        assert run(check.verify(token))["sub"] == "alice"
    else:
        assert refused(check, token).reason == "token expired"


def test_zero_leeway_refuses_at_exp() -> None:
    assert refused(verifier(now=NOW + 300, leeway=0), hs256()).reason == "token expired"
    assert run(verifier(now=NOW + 299, leeway=0).verify(hs256()))["sub"] == "alice"


@pytest.mark.parametrize(
    ("nbf", "accepted"),
    [(NOW - 1, True), (NOW, True), (NOW + 30, True), (NOW + 31, False), (NOW + 3600, False)],
)
def test_not_before(nbf: int, accepted: bool) -> None:
    check = verifier(leeway=30)
    token = hs256(nbf=nbf)
    if accepted:
        assert run(check.verify(token))["nbf"] == nbf
    else:
        assert refused(check, token).reason == "token not yet valid"


def test_issued_in_the_future_is_refused() -> None:
    assert refused(verifier(leeway=30), hs256(iat=NOW + 31)).reason == "token issued in the future"
    assert run(verifier(leeway=30).verify(hs256(iat=NOW + 30)))["iat"] == NOW + 30


@pytest.mark.parametrize(
    "claims",
    [{"exp": "tomorrow"}, {"exp": True}, {"nbf": "soon"}, {"iat": None, "nbf": [1]}],
)
def test_time_claims_must_be_numbers(claims: dict[str, Any]) -> None:
    assert "is not a number" in refused(verifier(), hs256(**claims)).reason


def test_missing_exp() -> None:
    token = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    assert refused(verifier(), token).reason == "missing claim 'exp'"
    assert run(verifier(require_exp=False).verify(token)) == {"sub": "alice"}


def test_real_clock_is_the_default() -> None:
    check = TokenVerifier(settings())
    with pytest.raises(Unauthenticated, match="token expired"):
        run(check.verify(hs256()))  # expired in 2023


# TokenVerifier: issuer and audience


ISSUER = "https://issuer.example"


@pytest.mark.parametrize(
    ("iss", "accepted"),
    [(ISSUER, True), ("https://evil.example", False), ("issuer", False), (ISSUER + "/", False)],
)
def test_issuer(iss: str, accepted: bool) -> None:
    check = verifier(issuer=ISSUER)
    token = hs256(iss=iss)
    if accepted:
        assert run(check.verify(token))["iss"] == ISSUER
    else:
        assert refused(check, token).reason == "wrong issuer"


def test_missing_issuer_is_refused_when_configured() -> None:
    assert refused(verifier(issuer=ISSUER), hs256()).reason == "missing claim 'iss'"
    assert run(verifier().verify(hs256(iss="anything")))["iss"] == "anything"


@pytest.mark.parametrize(
    ("aud", "configured", "accepted"),
    [
        ("files", "files", True),
        (["other", "files"], "files", True),
        ("other", "files", False),
        (["other"], "files", False),
        ("file", "files", False),
        ("b", ["a", "b"], True),
        ("c", ["a", "b"], False),
    ],
)
def test_audience(aud: Any, configured: Any, accepted: bool) -> None:
    check = verifier(audience=configured)
    token = hs256(aud=aud)
    if accepted:
        assert run(check.verify(token))["aud"] == aud
    else:
        assert refused(check, token).reason == "wrong audience"


def test_missing_audience_is_refused_when_configured() -> None:
    assert refused(verifier(audience="files"), hs256()).reason == "missing claim 'aud'"
    assert run(verifier().verify(hs256(aud="anything")))["aud"] == "anything"


# TokenVerifier: size and garbage


def test_token_larger_than_the_limit_is_refused_before_parsing() -> None:
    padding = "x" * MAX_TOKEN_BYTES
    big = hs256(padding=padding)
    assert len(big) > MAX_TOKEN_BYTES
    assert refused(verifier(), big).reason == "token too large"
    assert refused(verifier(), "a" * (MAX_TOKEN_BYTES + 1)).reason == "token too large"


def test_token_just_under_the_limit_is_accepted() -> None:
    base = len(hs256(padding=""))
    fits = hs256(padding="x" * ((MAX_TOKEN_BYTES - base - 4) * 3 // 4))
    assert MAX_TOKEN_BYTES - 16 < len(fits) <= MAX_TOKEN_BYTES
    assert run(verifier().verify(fits))["sub"] == "alice"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "....",
        "eyJhbGciOiJIUzI1NiJ9",
        "\u00e9\u00e9.\u00e9\u00e9.\u00e9\u00e9",
        b64(b"[1, 2]") + "." + b64(b"{}") + ".",
    ],
)
def test_garbage_token_is_refused(token: str) -> None:
    assert refused(verifier(), token).reason == "malformed token"


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"text"'])
def test_signed_token_with_a_bad_payload_is_refused(payload: bytes) -> None:
    signing_input = b64(b'{"alg": "HS256"}') + "." + b64(payload)
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert refused(verifier(), f"{signing_input}.{b64(signature)}").reason == "invalid token"


# issue_token


def test_issue_token_round_trips_through_verify() -> None:
    config = settings(issuer=ISSUER, audience="files")
    token = issue_token(config, {"sub": "alice", "role": "admin"}, ttl=120, clock=lambda: NOW)
    claims = run(TokenVerifier(config, clock=lambda: NOW + 100).verify(token))
    assert claims == {
        "sub": "alice",
        "role": "admin",
        "iat": NOW,
        "exp": NOW + 120,
        "iss": ISSUER,
        "aud": "files",
    }
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    expired = TokenVerifier(config, clock=lambda: NOW + 120 + config.leeway)
    assert refused(expired, token).reason == "token expired"


def test_issue_token_uses_the_first_hmac_algorithm() -> None:
    config = settings(algorithms=["RS256", "HS512", "HS256"], public_key=PUBLIC_PEM)
    token = issue_token(config, {"sub": "alice"}, ttl=60, clock=lambda: NOW)
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    assert run(TokenVerifier(config, clock=lambda: NOW).verify(token))["sub"] == "alice"


def test_issue_token_keeps_explicit_iss_and_aud() -> None:
    config = settings(issuer=ISSUER, audience="files")
    token = issue_token(config, {"iss": "x", "aud": "y"}, ttl=60, clock=lambda: NOW)
    unverified = jwt.decode(token, options={"verify_signature": False})
    assert (unverified["iss"], unverified["aud"]) == ("x", "y")
    refused(TokenVerifier(config, clock=lambda: NOW), token)


@pytest.mark.parametrize(
    "config",
    [
        settings(algorithms=["RS256"], secret=None, public_key=PUBLIC_PEM),
        settings(algorithms=["HS256"], secret=None),
    ],
)
def test_issue_token_needs_an_hmac_secret(config: AuthSettings) -> None:
    with pytest.raises(ValueError, match="cannot sign"):
        issue_token(config, {"sub": "alice"}, ttl=60)


def test_a_remembered_token_is_checked_again_after_a_minute() -> None:
    clock = {"now": float(NOW)}
    check = TokenVerifier(settings(), clock=lambda: clock["now"])
    token = hs256(exp=NOW + 3600)
    assert run(check.verify(token))["sub"] == "alice"
    check._single.secret = "another-secret-" + "q" * 40  # type: ignore[union-attr]
    assert run(check.verify(token))["sub"] == "alice"  # still remembered
    clock["now"] += 60
    with pytest.raises(Unauthenticated):
        run(check.verify(token))  # re-verified: the key it was signed with is gone


def test_a_remembered_token_is_refused_once_it_expires() -> None:
    """The verified-token cache skips the signature, never the clock (its time checks run
    on every use, from the times taken when the token was verified)."""
    clock = {"now": float(NOW)}
    check = TokenVerifier(settings(leeway=0), clock=lambda: clock["now"])
    token = hs256(exp=NOW + 30)
    assert run(check.verify(token))["sub"] == "alice"
    clock["now"] += 29
    assert run(check.verify(token))["sub"] == "alice"  # remembered, still valid
    clock["now"] += 1
    with pytest.raises(Unauthenticated, match="token expired"):
        run(check.verify(token))
    assert check.hits == 2  # both later uses were answered from the cache


def test_a_remembered_token_is_refused_before_its_nbf() -> None:
    clock = {"now": float(NOW + 100)}
    check = TokenVerifier(settings(leeway=0), clock=lambda: clock["now"])
    token = hs256(nbf=NOW + 50, exp=NOW + 3000)
    assert run(check.verify(token))["sub"] == "alice"
    clock["now"] = NOW + 10  # a clock stepped back: the remembered token is not valid yet
    with pytest.raises(Unauthenticated, match="not yet valid"):
        run(check.verify(token))


def test_only_the_very_token_verified_is_answered_from_the_cache() -> None:
    """The cache is keyed by the token string: a token that differs from a remembered one in
    its last character (a forged signature) or anywhere else is verified, and refused."""
    check = verifier()
    token = hs256()
    assert run(check.verify(token))["sub"] == "alice"
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(Unauthenticated, match=r"bad signature|invalid token"):
        run(check.verify(flipped))
    forged = handmade({"alg": "HS256", "typ": "JWT"}, {"sub": "mallory"}, OTHER_SECRET.encode())
    with pytest.raises(Unauthenticated):
        run(check.verify(forged))
    assert (check.hits, check.misses) == (0, 3)
    assert run(check.verify(token))["sub"] == "alice"
    assert check.hits == 1


def test_a_long_token_is_remembered_by_its_digest_and_the_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("proxy.auth.VERIFIED_CACHE_SIZE", 3)
    check = verifier()
    long = hs256(padding="p" * 1500)
    assert len(long) > 1024
    for _ in range(2):
        assert run(check.verify(long))["sub"] == "alice"
    assert check.hits == 1
    assert all(isinstance(key, bytes) for key in check._verified)  # not the token itself
    for number in range(5):
        run(check.verify(hs256(n=number)))
    assert len(check._verified) == 3  # oldest first out
    run(check.verify(hs256(n=4)))
    assert check.hits == 2
