"""The I/O-free parts of browser sign-in: which requests navigate, which `next` targets are
local, the signed flow cookie, the session's claims, and auth.login's config checks."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from proxy.auth import TokenVerifier
from proxy.config import SESSION_AUDIENCE, ConfigError
from proxy.errors import BadRequest
from proxy.login.navigation import is_navigation, prefers_html, safe_next, without_params
from proxy.login.session import Flow, decode_flow, encode_flow, mint_session, session_claims

from .conftest import SECRET, Clock, build_config, config_dict

SESSION_SECRET = "session-secret-" + "s" * 40
CHROME_NAVIGATION = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
CHROME_IMAGE = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (CHROME_NAVIGATION, True),
        ("text/html", True),
        ("application/xhtml+xml,text/html;q=0.9", True),
        (CHROME_IMAGE, False),
        ("*/*", False),
        ("", False),
        (None, False),
        ("application/json, text/html", False),
        ("*/*, text/html", False),  # equal q: the first listed wins
        ("text/html;q=0, */*", False),
        ("text/html;q=nonsense, */*", False),
        ("text/html;q=0.8, */*;q=0.9", False),
    ],
)
def test_prefers_html(accept: str | None, expected: bool) -> None:
    assert prefers_html(accept) is expected


def test_is_navigation_trusts_fetch_metadata_over_accept() -> None:
    html = {"Accept": CHROME_NAVIGATION}
    assert is_navigation("GET", {**html, "Sec-Fetch-Mode": "navigate"})
    assert is_navigation("GET", html)  # a browser that sends no fetch metadata
    assert not is_navigation("GET", {**html, "Sec-Fetch-Mode": "no-cors"})
    assert not is_navigation("GET", {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"})
    assert not is_navigation("HEAD", {**html, "Sec-Fetch-Mode": "navigate"})
    assert not is_navigation("POST", html)


@pytest.mark.parametrize(
    "target",
    ["/", "/admin/reports/q4.csv", "/files/a%20b.pdf?download=1", "/a?next=//x", "/a:b"],
)
def test_local_next_targets_are_kept(target: str) -> None:
    assert safe_next(target) == target


@pytest.mark.parametrize(
    "target",
    [
        "",
        "//evil.example.com",
        "/\\evil.example.com",
        "\\\\evil.example.com",
        "https://evil.example.com/",
        "HTTPS://evil.example.com/",
        "evil.example.com/x",
        "%2F%2Fevil.example.com",
        "/%2Fevil.example.com",
        "/%2f%2fevil.example.com",
        "/%5Cevil.example.com",
        "/%25252F%25252Fevil",  # encoded three times and more
        "/\t/evil.example.com",
        "/\n/evil.example.com",
        "/%09/evil.example.com",
        "/ /evil",
        "/é",
        "/" + "a" * 3000,
    ],
)
def test_other_hosts_are_never_a_next_target(target: str) -> None:
    assert safe_next(target) is None


def test_credentials_in_the_query_are_not_carried_to_next() -> None:
    assert without_params("/a?token=x&size=2&link=y", {"token", "link"}) == "/a?size=2"
    assert without_params("/a?token=x", {"token"}) == "/a"
    assert without_params("/a", {"token"}) == "/a"


def test_the_flow_cookie_is_bound_to_its_state_secret_and_time() -> None:
    flow = Flow(state="S" * 43, nonce="n" * 43, verifier="v" * 64, next="/x")
    token = encode_flow(flow, SESSION_SECRET, 1000, 600)
    assert decode_flow(token, flow.state, SESSION_SECRET, 1500) == flow
    for state, secret, now in [
        ("T" * 43, SESSION_SECRET, 1500),  # another state
        (flow.state, "another-secret-" + "x" * 40, 1500),  # not signed by us
        (flow.state, SESSION_SECRET, 1600),  # expired
    ]:
        with pytest.raises(BadRequest):
            decode_flow(token, state, secret, now)
    # A session token (another audience) is not a flow, however well signed.
    session = jwt.encode({"aud": SESSION_AUDIENCE, "exp": 2000}, SESSION_SECRET)
    with pytest.raises(BadRequest):
        decode_flow(session, flow.state, SESSION_SECRET, 1500)


def login_settings(**login: Any) -> dict[str, Any]:
    return {
        "issuer": "https://accounts.example.com",
        "client_id": "proxy",
        "public_url": "https://files.example.com",
        "session_secret": SESSION_SECRET,
        **login,
    }


def login_only(**login: Any) -> dict[str, Any]:
    """A config whose only issuer is sign-in: routes need not list issuers."""
    data = config_dict("http://127.0.0.1:9", auth={"login": login_settings(**login)})
    del data["auth"]["algorithms"], data["auth"]["secret"]
    return data


async def test_a_session_token_verifies_as_the_login_issuer_and_maps_claims() -> None:
    config = build_config(
        login_only(claims={"roles": "realm_access.roles", "mail": "email", "url": "https://x/y"})
    )
    login = config.settings.auth.login
    assert login is not None
    provider = {
        "iss": "https://accounts.example.com",
        "sub": "u-1",
        "exp": 5000,
        "email": "u@example.com",
        "realm_access": {"roles": ["admin"]},
        "https://x/y": "whole",
        "nonce": "n",
    }
    claims = session_claims(login, provider, 1000)
    assert claims["exp"] == 5000  # the ID token's, within max_age
    assert claims["iss"] == "https://files.example.com" and claims["idp"] == provider["iss"]
    assert claims["roles"] == ["admin"] and claims["mail"] == "u@example.com"
    assert claims["url"] == "whole" and "nonce" not in claims and "email" not in claims
    assert session_claims(login, {**provider, "exp": 10**9}, 1000)["exp"] == 1000 + 12 * 3600
    verifier = TokenVerifier(config.settings.auth, Clock(1500))
    verified = await verifier.verify(mint_session(claims, SESSION_SECRET))
    assert verified["sub"] == "u-1"
    assert all(route.sign_in for route in config.routes if route.rule.needs_token)


def test_with_another_issuer_routes_name_the_login_to_accept_sessions() -> None:
    data = config_dict("http://127.0.0.1:9")
    data["auth"].update(name="bearer", issuer="https://t.example.com", login=login_settings())
    with pytest.raises(ConfigError) as refused:
        build_config(data)
    assert "issuers: required with several auth.issuers" in str(refused.value)
    assert "login" in str(refused.value)
    for route in data["routes"]:
        if route["access"] != "public":
            route["issuers"] = ["bearer"] if route["name"] == "my-files" else ["bearer", "login"]
    config = build_config(data)
    sign_in = {route.name: route.sign_in for route in config.routes}
    assert sign_in["my-files"] is False and sign_in["admin-exports"] is True
    assert sign_in["public-photos"] is False


@pytest.mark.parametrize(
    ("login", "message"),
    [
        ({"session_secret": "short"}, "auth.login.session_secret: at least 32 bytes"),
        ({"public_url": "http://files.example.com"}, "auth.login.public_url: must be an https"),
        ({"issuer": "http://accounts.example.com"}, "auth.login.issuer: must be an https"),
        ({"scopes": ["email"]}, "auth.login.scopes: must include openid"),
        ({"claims": {"sub": "email"}}, "auth.login.claims: 'sub' is set by the proxy"),
        ({"cookie": {"name": "sess"}}, "auth.login.cookie.name: 'sess' is not one of auth.sources"),
        ({"redirect_path": "/healthz"}, "is also health.live_path"),
        ({"logout_redirect": "//evil.example.com"}, "auth.login.logout_redirect: must be a path"),
        ({"client_id": ""}, "auth.login.client_id"),
        ({"max_age": 2 * 86400}, "auth.login.max_age: 172800 is longer than revocation"),
    ],
)
def test_login_mistakes_are_caught_at_load(login: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        build_config(login_only(**login))
    assert message in str(refused.value)


def test_the_session_secret_must_be_its_own() -> None:
    data = config_dict("http://127.0.0.1:9")
    data["auth"]["login"] = login_settings(session_secret=SECRET)
    with pytest.raises(ConfigError) as refused:
        build_config(data)
    assert "auth.login.session_secret: must differ" in str(refused.value)


def test_an_empty_client_secret_is_a_public_client() -> None:
    config = build_config(login_only(client_secret=""))
    login = config.settings.auth.login
    assert login is not None and login.client_secret is None and login.secure


class RecordingProvider:
    """The provider behind our own seam (ProviderHttp), for what the real one cannot show:
    what a public client sends."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str, dict[str, str]]] = []

    async def __call__(self, url: str, headers: Any = None) -> Any:
        return {
            "issuer": "https://accounts.example.com",
            "authorization_endpoint": "https://accounts.example.com/auth",
            "token_endpoint": "https://accounts.example.com/token",
            "jwks_uri": "https://accounts.example.com/jwks",
        }

    async def post_form(self, url: str, form: str, headers: Any) -> tuple[int, Any]:
        self.posted.append((url, form, dict(headers)))
        return 400, {"error": "invalid_grant"}


@pytest.mark.parametrize("secret", ["", "client-secret"])
async def test_the_code_exchange_authenticates_as_configured(secret: str) -> None:
    from urllib.parse import parse_qs

    from proxy.login.provider import Provider

    config = build_config(login_only(client_secret=secret))
    auth = config.settings.auth
    assert auth.login is not None
    http = RecordingProvider()
    provider = Provider(auth.login, auth.jwks, auth.leeway, http, Clock(1000))
    with pytest.raises(BadRequest) as refused:
        await provider.exchange("the-code", "the-verifier")
    assert refused.value.reason == "provider refused the code (invalid_grant)"
    ((url, form, headers),) = http.posted
    assert url == "https://accounts.example.com/token"
    sent = parse_qs(form)
    assert sent["grant_type"] == ["authorization_code"] and sent["code"] == ["the-code"]
    assert sent["code_verifier"] == ["the-verifier"]
    assert sent["redirect_uri"] == ["https://files.example.com/_auth/callback"]
    if secret:  # a confidential client: HTTP Basic, the secret never in the form
        assert headers["Authorization"].startswith("Basic ") and "client_id" not in sent
    else:  # a public client: names itself, proves itself by PKCE
        assert "Authorization" not in headers and sent["client_id"] == ["proxy"]
    assert "client_secret" not in sent


@pytest.mark.parametrize(
    ("headers", "same"),
    [
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Site": "none"}, True),
        ({"Sec-Fetch-Site": "same-site", "Origin": "https://files.example.com"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Origin": "https://files.example.com"}, True),
        ({"Origin": "https://files.example.com:8443"}, False),
        ({"Origin": "http://files.example.com"}, False),
        ({"Origin": "null"}, False),
        ({}, True),
    ],
)
def test_sign_out_must_come_from_our_own_pages(headers: dict[str, str], same: bool) -> None:
    from proxy.login.navigation import is_same_origin

    assert is_same_origin(headers, "https://files.example.com") is same
