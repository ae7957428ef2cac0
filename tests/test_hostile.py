"""Hostile input: every trick gets a clear 4xx or is ignored per RFC — never a 500, never a
key outside the route's template, never injection. Includes property tests (hypothesis)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.auth import check_times
from proxy.errors import BadRequest, Unauthenticated
from proxy.routing import compile_pattern, compile_template

from .conftest import SECRET, S3Objects, bearer, config_dict, make_token, raw_request
from .fakes import FakeStorage

ALICE = bearer(make_token("alice"))


def _hs256(payload: dict[str, Any]) -> str:
    """Sign any payload, even one pyjwt would refuse to encode."""
    signing_input = b".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
        for part in ({"alg": "HS256", "typ": "JWT"}, payload)
    )
    signature = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


# Property: whatever the path, a rendered key stays inside its template.

REST = compile_pattern("/files/{path:.+}")
ONE = compile_pattern("/photos/{id}")
KEY = compile_template("tenants/acme/{path}")


def _check_rendered(key: str, prefix: str) -> None:
    assert key.startswith(prefix)
    rest = key[len(prefix) :]
    assert rest
    for segment in rest.split("/"):
        assert segment not in ("", ".", "..")
    assert not any(ord(c) < 0x20 or c in "\\\x7f" for c in rest)


@settings(max_examples=600, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_decoded_rest_params_never_leave_the_template(text: str) -> None:
    for raw in (quote(text, safe="/"), quote(text, safe=""), quote(quote(text, safe=""))):
        try:
            params = REST.match("/files/" + raw)
        except BadRequest:
            continue
        if params is None:
            continue
        _check_rendered(KEY.render(params, None), "tenants/acme/")


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from("./\\%2eEfF0%acC%00a"), min_size=1, max_size=30))
def test_percent_tricks_never_yield_dot_segments(raw: str) -> None:
    for pattern in (REST, ONE):
        prefix = "/files/" if pattern is REST else "/photos/"
        try:
            params = pattern.match(prefix + raw)
        except BadRequest:
            continue
        if params is None:
            continue
        for value in params.values():
            assert all(seg not in ("", ".", "..") for seg in value.split("/"))
            if pattern is ONE:
                assert "/" not in value


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.text(min_size=1, max_size=40), header=st.text(max_size=40))
async def test_http_fuzz_never_500_and_never_escapes(proxy, path: str, header: str) -> None:
    fake = FakeStorage()
    client = await proxy(config_dict(), storage=fake)
    target = "/admin/exports/" + quote(path, safe="/%")
    headers = {
        **bearer(make_token(role="admin")),
        "Range": header.encode("ascii", "replace").decode(),
        "If-None-Match": header.encode("ascii", "replace").decode(),
    }
    headers = {k: v.replace("\r", "").replace("\n", "") for k, v in headers.items()}
    status, _, _ = await raw_request(client, target, headers)
    assert status in (200, 206, 304, 400, 404, 412, 416), status
    for _, bucket, key in fake.calls:
        assert bucket == "reports"
        _check_rendered(key, "exports/")


# Regressions found in review


async def test_space_in_sub_does_not_pass_an_owner_rule(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get(
        "/users/alice/albums/trip/1.jpg", headers=bearer(make_token("mallory alice"))
    )
    assert response.status == 403


@pytest.mark.parametrize("iss", [["a", "b"], {"x": 1}, 7, None])
async def test_odd_iss_with_several_issuers_is_401(proxy, s3: S3Objects, iss: Any) -> None:
    data = config_dict(s3.endpoint)
    data["auth"] = {"issuers": [{"issuer": "a", "secret": SECRET}]}
    client = await proxy(data)
    token = _hs256({"sub": "x", "iss": iss, "exp": 2**40})
    response = await client.get("/stream/photos/42", headers=bearer(token))
    assert response.status == 401


@pytest.mark.parametrize(
    "value",
    ["Sun, 06 Nov 99999999999999999999 08:49:37 GMT", "Mon, 32 Foo 2020 99:99:99 GMT", "0", ""],
)
async def test_absurd_dates_are_ignored(proxy, s3: S3Objects, value: str) -> None:
    client = await proxy()
    for path, headers in (("/public/42", {}), ("/stream/photos/42", ALICE)):
        for name in ("If-Modified-Since", "If-Unmodified-Since"):
            response = await client.get(path, headers={**headers, name: value})
            assert response.status == 200, (path, name)
            assert await response.read() == s3.photo


async def test_non_ascii_validators_match_nothing(proxy, s3: S3Objects) -> None:
    # Judged by the proxy, never forwarded: a tag S3 cannot have simply does not match.
    client = await proxy()
    status, _, body = await raw_request(client, "/public/42", {"If-None-Match": '"\xff\xfe"'})
    assert (status, body) == (200, s3.photo)
    status, _, body = await raw_request(client, "/public/42", {"If-Match": '"\xff\xfe"'})
    assert (status, body) == (412, b'{"error": "precondition failed"}')


async def test_deeply_nested_json_is_400(proxy) -> None:
    client = await proxy()
    response = await client.post(
        "/_sign", data=b"[" * 100_000, headers={**ALICE, "Content-Type": "application/json"}
    )
    assert response.status == 400


async def test_a_lone_surrogate_spoils_only_its_own_entry(proxy, s3: S3Objects) -> None:
    client = await proxy()
    body = '{"paths": ["/photos/\\ud800", "/photos/42"]}'
    response = await client.post(
        "/_sign", data=body.encode(), headers={**ALICE, "Content-Type": "application/json"}
    )
    assert response.status == 200
    bad, good = (await response.json())["results"]
    assert bad["status"] == 400
    assert "url" in good


def test_non_finite_time_claims_are_refused() -> None:
    for value in (float("nan"), float("inf")):
        with pytest.raises(Unauthenticated):
            check_times({"exp": value}, 1_900_000_000, 30)


async def test_unknown_critical_header_is_401(proxy) -> None:
    client = await proxy()
    token = jwt.encode(
        {"sub": "alice", "exp": 2**40},
        SECRET,
        algorithm="HS256",
        headers={"crit": ["x-ext"], "x-ext": 1},
    )
    assert (await client.get("/stream/photos/42", headers=bearer(token))).status == 401


# Header tricks


async def test_range_unit_is_case_insensitive(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get("/stream/photos/42", headers={**ALICE, "Range": "Bytes=0-9"})
    assert response.status == 206
    assert await response.read() == s3.photo[:10]


async def test_many_range_parts_are_ignored(proxy, s3: S3Objects) -> None:
    client = await proxy()
    many = "bytes=" + ",".join(f"{i}-{i}" for i in range(500))
    response = await client.get("/stream/photos/42", headers={**ALICE, "Range": many})
    assert response.status == 200
    assert await response.read() == s3.photo


@pytest.mark.parametrize("name", ["Cookie", "X-Padding", "Authorization"])
async def test_oversized_headers_are_refused_cleanly(proxy, name: str) -> None:
    client = await proxy()
    status, _, body = await raw_request(client, "/public/42", {name: "a" * 20_000})
    assert 400 <= status < 500
    assert b"Traceback" not in body


async def test_huge_token_is_401(proxy) -> None:
    client = await proxy()
    token = make_token("alice", padding="x" * 9000)
    response = await client.get("/stream/photos/42", params={"token": token})
    assert response.status in (401, 414, 400)


async def test_active_content_is_sandboxed(proxy, s3: S3Objects) -> None:
    client = await proxy()
    response = await client.get(
        "/admin/exports/page.html", headers=bearer(make_token(role="admin"))
    )
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Content-Security-Policy"].startswith("sandbox")
    assert response.headers["Content-Disposition"].startswith("attachment")
    photo = await client.get("/public/42")  # every streamed body is sandboxed, images too
    assert photo.headers["Content-Security-Policy"].startswith("sandbox")
    assert "Content-Disposition" not in photo.headers  # an image may be shown


async def test_304_repeats_cache_control(proxy) -> None:
    client = await proxy()
    first = await client.get("/stream/photos/42", headers=ALICE)
    again = await client.get(
        "/stream/photos/42", headers={**ALICE, "If-None-Match": first.headers["ETag"]}
    )
    assert again.status == 304
    assert again.headers["Cache-Control"] == "private, no-cache"


async def test_cacheable_redirects_vary_by_credentials(proxy) -> None:
    client = await proxy()
    response = await client.get("/stable/photos/42", headers=ALICE, allow_redirects=False)
    assert response.status == 302
    vary = {v.strip() for v in response.headers["Vary"].split(",")}
    assert {"Accept", "Authorization", "Cookie"} <= vary


@pytest.mark.parametrize(
    ("public", "prefix"),
    [
        ("https://Files.Example.COM:443", "https://files.example.com/"),
        ("http://files.example.com:80/", "http://files.example.com/"),
        ("http://files.example.com:9000", "http://files.example.com:9000/"),
    ],
)
async def test_public_endpoint_host_is_signed_as_browsers_send_it(
    proxy, s3: S3Objects, public: str, prefix: str
) -> None:
    client = await proxy(config_dict(s3.endpoint, s3={"public_endpoint_url": public}))
    response = await client.get("/photos/42", headers=ALICE, allow_redirects=False)
    assert response.headers["Location"].startswith(prefix + "hr-private/")


@settings(max_examples=300, deadline=None)
@given(
    token=st.one_of(
        st.text(max_size=300),
        st.builds(
            lambda h, p, sig: (
                ".".join(
                    base64.urlsafe_b64encode(part.encode()).rstrip(b"=").decode() for part in (h, p)
                )
                + "."
                + sig
            ),
            st.text(max_size=80),
            st.text(max_size=120),
            st.text(max_size=40),
        ),
        st.builds(
            lambda header, payload: _forge(header, payload),
            st.dictionaries(
                st.sampled_from(["alg", "kid", "typ", "crit", "jku", "x5u"]),
                st.one_of(
                    st.text(max_size=20),
                    st.integers(),
                    st.none(),
                    st.lists(st.text(max_size=5), max_size=3),
                ),
            ),
            st.dictionaries(
                st.sampled_from(["sub", "exp", "iss", "aud", "nbf", "iat"]),
                st.one_of(
                    st.text(max_size=20), st.integers(), st.floats(), st.none(), st.booleans()
                ),
            ),
        ),
    )
)
def test_any_token_is_verified_or_refused_with_401(token: str) -> None:
    from proxy.auth import TokenVerifier
    from proxy.config import AuthSettings

    verifier = TokenVerifier(AuthSettings(secret=SECRET), clock=lambda: 1_900_000_000)
    try:
        claims = asyncio.run(verifier.verify(token))
    except Unauthenticated:
        return
    assert isinstance(claims, dict)  # only a correctly signed, current token gets here


def _forge(header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A token signed with the real secret whatever its header says (for alg confusion)."""
    signing_input = b".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
        for part in (header, payload)
    )
    signature = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()
