"""Browser sign-in (auth.login) over real sockets: the proxy on loopback, a real OpenID
Connect provider (oidc-provider-mock) on loopback, and the flow driven hop by hop with
aiohttp's client, as a browser would follow it, where no browser is needed."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient

from proxy.app import Gateway
from tests.conftest import (
    Clock,
    ProductionLikeServer,
    S3Objects,
    bearer,
    build_config,
    make_token,
)
from tests.oidc_provider import BEARER_ISS, login_config
from tests.oidc_provider import provider as provider  # a fixture: module-scoped provider
from tests.redisd import RedisServer
from tests.running import free_port

NAVIGATE = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
}


@dataclass
class Proxy:
    base: str
    client: TestClient[Any, Any]
    session: aiohttp.ClientSession


Start = Callable[..., Any]


@pytest.fixture
async def signin_proxy(aiohttp_client: Any, s3: S3Objects, provider: str) -> AsyncIterator[Start]:
    sessions: list[aiohttp.ClientSession] = []

    async def start(clock: Callable[[], float] | None = None, **login: Any) -> Proxy:
        port = free_port()
        config = build_config(login_config(s3.endpoint, provider, port, **login))
        gateway = Gateway(config, clock=clock) if clock else Gateway(config)
        server = ProductionLikeServer(gateway, config)
        server.port = port
        client: TestClient[Any, Any] = await aiohttp_client(server)
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Proxy(f"http://127.0.0.1:{port}", client, session)

    yield start
    for session in sessions:
        await session.close()


@dataclass
class Hop:
    """One answer, read whole."""

    status: int
    headers: Any
    cookies: Any
    body: bytes

    async def text(self) -> str:
        return self.body.decode(errors="replace")


async def get(proxy: Proxy, url: str, headers: dict[str, str] | None = None) -> Hop:
    """One hop, no redirects followed."""
    url = url if url.startswith("http") else proxy.base + url
    async with proxy.session.get(url, headers=headers, allow_redirects=False) as response:
        body = await response.read()
        return Hop(response.status, response.headers, response.cookies, body)


def cookie_header(*responses: Hop) -> str:
    return "; ".join(f"{k}={m.value}" for r in responses for k, m in r.cookies.items() if m.value)


@dataclass
class Authorization:
    """A sign-in started at the proxy and waiting at the provider's form."""

    url: str  # the provider's authorization URL
    flow: Hop  # the proxy's answer that set the flow cookie


async def start_sign_in(proxy: Proxy, path: str) -> Authorization:
    first = await get(proxy, path, NAVIGATE)
    assert first.status == 302, await first.text()
    start = await get(proxy, first.headers["Location"], NAVIGATE)
    assert start.status == 302, await start.text()
    return Authorization(start.headers["Location"], start)


async def authorize(proxy: Proxy, url: str, sub: str) -> str:
    """Sign in as `sub` on the provider's form; the callback URL it sends the browser to."""
    async with proxy.session.post(url, data={"sub": sub}, allow_redirects=False) as answer:
        assert answer.status == 302, await answer.text()
        location = answer.headers["Location"]
    assert location.startswith(proxy.base + "/_auth/callback?")
    return location


async def sign_in(proxy: Proxy, path: str, sub: str) -> Hop:
    """The whole flow; the callback's answer (302 back to `path`, session cookie set)."""
    started = await start_sign_in(proxy, path)
    callback = await authorize(proxy, started.url, sub)
    return await get(proxy, callback, {**NAVIGATE, "Cookie": cookie_header(started.flow)})


def session_cookie(response: Hop) -> str:
    return response.cookies["access_token"].value


async def test_a_navigation_signs_in_and_lands_on_the_file(
    signin_proxy: Start, s3: S3Objects
) -> None:
    proxy = await signin_proxy()
    first = await get(proxy, "/admin/exports/q4.pdf", NAVIGATE)
    assert first.status == 302
    assert first.headers["Location"] == "/_auth/login?next=%2Fadmin%2Fexports%2Fq4.pdf"
    assert first.headers["Cache-Control"] == "no-store"
    start = await get(proxy, first.headers["Location"])
    assert start.status == 302
    query = parse_qs(urlsplit(start.headers["Location"]).query)
    assert query["response_type"] == ["code"] and query["client_id"] == ["s3-proxy"]
    assert query["redirect_uri"] == [proxy.base + "/_auth/callback"]
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["scope"] == ["openid email profile"]
    assert query["state"][0] != query["nonce"][0]
    (flow_name,) = start.cookies
    assert flow_name == "signin_" + query["state"][0]
    flow = start.cookies[flow_name]
    assert flow["path"] == "/_auth/callback" and flow["httponly"] and not flow["secure"]
    assert flow["samesite"] == "Lax"

    callback = await authorize(proxy, start.headers["Location"], "admin-1")
    done = await get(proxy, callback, {**NAVIGATE, "Cookie": cookie_header(start)})
    assert done.status == 302, await done.text()
    assert done.headers["Location"] == "/admin/exports/q4.pdf"
    cookie = done.cookies["access_token"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    assert not cookie["secure"]  # plain http on loopback only; https public_url sets Secure
    assert done.cookies[flow_name]["max-age"] == "0"  # the flow cookie is spent

    claims = jwt.decode(cookie.value, options={"verify_signature": False})
    assert claims["iss"] == proxy.base and claims["idp"].startswith("http://127.0.0.1:")
    assert claims["sub"] == "admin-1" and claims["role"] == "admin"
    assert claims["email"] == "admin@example.com" and claims["groups"] == ["staff", "admins"]
    assert {"iat", "exp", "jti"} <= set(claims) and "nonce" not in claims
    assert 0 < int(cookie["max-age"]) <= claims["exp"] - claims["iat"] <= 3600

    landed = await get(proxy, "/admin/exports/q4.pdf", {"Cookie": f"access_token={cookie.value}"})
    assert landed.status == 200
    assert landed.body == s3.report


async def test_an_employee_signs_in_and_is_forbidden(signin_proxy: Start) -> None:
    proxy = await signin_proxy()
    done = await sign_in(proxy, "/admin/exports/q4.pdf", "employee-7")
    assert done.status == 302
    cookie = {"Cookie": f"access_token={session_cookie(done)}"}
    refused = await get(proxy, "/admin/exports/q4.pdf", {**NAVIGATE, **cookie})
    assert refused.status == 403  # signed in, and not an admin: no second trip to sign in
    mine = await get(proxy, "/stream/photos/42", cookie)
    assert mine.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},  # an API client
        {"Accept": "*/*"},  # fetch(), curl
        {"Accept": "application/json"},
        {"Accept": "image/avif,image/webp,image/*,*/*;q=0.8"},  # <img> without Sec-Fetch
        {**NAVIGATE, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},  # <img>
        {**NAVIGATE, "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},  # fetch()
        {**NAVIGATE, "Sec-Fetch-Dest": "iframe"},
        {"Accept": "*/*,text/html"},  # HTML only after anything
        {"Accept": "text/html;q=0.5,application/json"},
    ],
)
async def test_what_cannot_follow_a_login_page_still_gets_401(
    signin_proxy: Start, headers: dict[str, str]
) -> None:
    proxy = await signin_proxy()
    answer = await get(proxy, "/admin/exports/q4.pdf", headers)
    assert answer.status == 401
    assert "Location" not in answer.headers


async def test_navigations_without_fetch_metadata_are_recognised_by_accept(
    signin_proxy: Start,
) -> None:
    proxy = await signin_proxy()
    old_browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    assert (await get(proxy, "/stream/photos/42", old_browser)).status == 302
    head = await proxy.session.head(proxy.base + "/stream/photos/42", headers=NAVIGATE)
    assert head.status == 401  # only GET navigates


async def test_a_rejected_token_is_a_sign_in_too_but_not_on_routes_that_take_no_sessions(
    signin_proxy: Start,
) -> None:
    proxy = await signin_proxy()
    expired = make_token(ttl=-3600, iss=BEARER_ISS)
    answer = await get(proxy, "/stream/photos/42?token=" + expired + "&size=2", NAVIGATE)
    assert answer.status == 302
    # the rejected token is not carried back (it would be read again after sign-in)
    assert answer.headers["Location"] == "/_auth/login?next=%2Fstream%2Fphotos%2F42%3Fsize%3D2"
    api_only = await get(proxy, "/api/exports/q4.pdf", NAVIGATE)
    assert api_only.status == 401
    valid = await get(proxy, "/api/exports/q4.pdf", bearer(make_token(iss=BEARER_ISS)))
    assert valid.status == 200


async def test_tampered_state_or_flow_cookie_is_refused(signin_proxy: Start) -> None:
    proxy = await signin_proxy()
    started = await start_sign_in(proxy, "/stream/photos/42")
    callback = await authorize(proxy, started.url, "admin-1")
    cookies = {"Cookie": cookie_header(started.flow)}
    state = parse_qs(urlsplit(callback).query)["state"][0]
    other = "Z" * len(state)
    tampered = await get(proxy, callback.replace(state, other), cookies)
    assert tampered.status == 400
    assert "access_token" not in tampered.cookies
    # The cookie renamed to match a state of the attacker's choice: its contents disagree.
    (name,) = started.flow.cookies
    renamed = {"Cookie": f"signin_{other}={started.flow.cookies[name].value}"}
    assert (await get(proxy, callback.replace(state, other), renamed)).status == 400
    # A forged flow cookie (its signature broken) is refused too.
    value = started.flow.cookies[name].value
    head, body, signature = value.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["nx"] = "//evil.example.com/"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    forged = {"Cookie": f"{name}={head}.{forged_body}.{signature}"}
    assert (await get(proxy, callback, forged)).status == 400
    assert (await get(proxy, callback)).status == 400  # no cookie: another browser
    # The untouched callback still works (nothing above spent the code).
    done = await get(proxy, callback, cookies)
    assert done.status == 302 and done.headers["Location"] == "/stream/photos/42"


async def test_a_replayed_code_is_refused(signin_proxy: Start) -> None:
    proxy = await signin_proxy()
    started = await start_sign_in(proxy, "/stream/photos/42")
    callback = await authorize(proxy, started.url, "admin-1")
    cookies = {"Cookie": cookie_header(started.flow)}
    assert (await get(proxy, callback, cookies)).status == 302
    replayed = await get(proxy, callback, cookies)  # the same request, cookie and all
    assert replayed.status == 400
    assert "access_token" not in replayed.cookies


async def test_an_id_token_for_another_nonce_is_refused(signin_proxy: Start) -> None:
    proxy = await signin_proxy()
    started = await start_sign_in(proxy, "/stream/photos/42")
    nonce = parse_qs(urlsplit(started.url).query)["nonce"][0]
    # The provider is asked for a token with a nonce the proxy did not choose.
    callback = await authorize(proxy, started.url.replace(nonce, "injected" + nonce[8:]), "admin-1")
    answer = await get(proxy, callback, {"Cookie": cookie_header(started.flow)})
    assert answer.status == 401
    assert "access_token" not in answer.cookies


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example.com/",
        "/\\evil.example.com/",
        "https://evil.example.com/",
        "http:evil.example.com",
        "%2F%2Fevil.example.com",
        "/%2F%2Fevil.example.com",  # decodes to //evil
        "/%5Cevil.example.com",
        "/%252F%252Fevil.example.com",  # twice encoded
        "/\t/evil.example.com",
        "javascript:alert(1)",
        "evil.example.com",
    ],
)
async def test_next_pointing_anywhere_but_this_proxy_is_refused(
    signin_proxy: Start, target: str
) -> None:
    proxy = await signin_proxy()
    async with proxy.session.get(
        proxy.base + "/_auth/login", params={"next": target}, allow_redirects=False
    ) as answer:
        assert answer.status == 400
        assert "Location" not in answer.headers and not answer.cookies


async def test_the_session_ends_with_the_id_token_or_max_age(signin_proxy: Start) -> None:
    clock = Clock()
    proxy = await signin_proxy(clock=clock, max_age=600)
    done = await sign_in(proxy, "/stream/photos/42", "employee-7")
    cookie = done.cookies["access_token"]
    claims = jwt.decode(cookie.value, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 600 and int(cookie["max-age"]) == 600
    jar = {"Cookie": f"access_token={cookie.value}"}
    assert (await get(proxy, "/stream/photos/42", jar)).status == 200
    clock.now += 700
    assert (await get(proxy, "/stream/photos/42", jar)).status == 401
    assert (await get(proxy, "/stream/photos/42", {**NAVIGATE, **jar})).status == 302


async def post(proxy: Proxy, url: str, headers: dict[str, str] | None = None) -> Hop:
    """One POST hop, no redirects followed."""
    url = url if url.startswith("http") else proxy.base + url
    async with proxy.session.post(url, headers=headers, allow_redirects=False) as response:
        body = await response.read()
        return Hop(response.status, response.headers, response.cookies, body)


SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate"}


async def test_logout_clears_the_session_and_ends_the_provider_session(
    signin_proxy: Start, provider: str
) -> None:
    proxy = await signin_proxy(logout_redirect="/")
    out = await post(proxy, "/_auth/logout", SAME_ORIGIN)
    assert out.status == 303
    location = out.headers["Location"]
    assert location.startswith(provider + "/oauth2/end_session?")
    query = parse_qs(urlsplit(location).query)
    assert query == {"client_id": ["s3-proxy"], "post_logout_redirect_uri": [proxy.base + "/"]}
    cleared = out.cookies["access_token"]
    assert cleared.value == "" and cleared["max-age"] == "0" and cleared["path"] == "/"


async def test_sign_out_ends_a_captured_session_at_once(signin_proxy: Start) -> None:
    """Issue 21 item 5: clearing the cookie is not enough; a copy of the session token taken
    before sign-out (a stolen cookie) must be refused from then on."""
    proxy = await signin_proxy()
    done = await sign_in(proxy, "/stream/photos/42", "employee-7")
    captured = {"Cookie": f"access_token={session_cookie(done)}"}
    assert (await get(proxy, "/stream/photos/42", captured)).status == 200
    out = await post(proxy, "/_auth/logout", {**SAME_ORIGIN, **captured})
    assert out.status == 303 and out.cookies["access_token"]["max-age"] == "0"
    replayed = await get(proxy, "/stream/photos/42", captured)
    assert replayed.status == 401
    assert 'error_description="token revoked"' in replayed.headers["WWW-Authenticate"]
    # A fresh sign-in is a new session, untouched.
    again = await sign_in(proxy, "/stream/photos/42", "employee-7")
    fresh = {"Cookie": f"access_token={session_cookie(again)}"}
    assert (await get(proxy, "/stream/photos/42", fresh)).status == 200


async def test_sign_out_on_one_replica_ends_the_session_on_the_others(
    aiohttp_client: Any, s3: S3Objects, provider: str, redis_server: RedisServer
) -> None:
    port = free_port()
    data = login_config(s3.endpoint, provider, port)
    data["state"] = {"backend": "redis", "url": redis_server.url}
    replicas = []
    for listen in (port, free_port()):  # two replicas behind one public URL
        config = build_config(data)
        server = ProductionLikeServer(Gateway(config), config)
        server.port = listen
        client: TestClient[Any, Any] = await aiohttp_client(server)
        replicas.append(client)
    async with aiohttp.ClientSession() as session:
        first = Proxy(f"http://127.0.0.1:{port}", replicas[0], session)
        done = await sign_in(first, "/stream/photos/42", "employee-7")
        captured = {"Cookie": f"access_token={session_cookie(done)}"}
        other = replicas[1]
        assert (await other.get("/stream/photos/42", headers=captured)).status == 200
        out = await post(first, "/_auth/logout", {**SAME_ORIGIN, **captured})
        assert out.status == 303
        deadline = time.monotonic() + 2  # the promise: every replica within one second
        while (await other.get("/stream/photos/42", headers=captured)).status != 401:
            assert time.monotonic() < deadline, "the other replica still accepts the session"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain is another site's page
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ],
)
async def test_sign_out_from_another_site_is_refused(
    signin_proxy: Start, headers: dict[str, str]
) -> None:
    proxy = await signin_proxy()
    done = await sign_in(proxy, "/stream/photos/42", "employee-7")
    jar = {"Cookie": f"access_token={session_cookie(done)}"}
    out = await post(proxy, "/_auth/logout", {**headers, **jar})
    assert out.status == 403
    assert json.loads(out.body) == {"error": "sign out from this site's own page"}
    assert "access_token" not in out.cookies
    assert (await get(proxy, "/stream/photos/42", jar)).status == 200


async def test_a_get_of_the_sign_out_path_signs_no_one_out(signin_proxy: Start) -> None:
    """A link or an <img> pointing at the sign-out path (from anywhere) changes nothing: the
    GET shows a button that POSTs."""
    proxy = await signin_proxy()
    done = await sign_in(proxy, "/stream/photos/42", "employee-7")
    jar = {"Cookie": f"access_token={session_cookie(done)}"}
    page = await get(proxy, "/_auth/logout", {**NAVIGATE, **jar})
    assert page.status == 200 and not page.cookies
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert '<form method="post" action="/_auth/logout">' in await page.text()
    assert (await get(proxy, "/stream/photos/42", jar)).status == 200
    async with proxy.session.put(proxy.base + "/_auth/logout") as refused:
        assert refused.status == 405 and refused.headers["Allow"] == "GET, HEAD, POST"
    # Neither header: no browser's cross-site request (curl, an app's backend).
    assert (await post(proxy, "/_auth/logout", jar)).status == 303
    assert (await get(proxy, "/stream/photos/42", jar)).status == 401


async def test_a_provider_that_is_down_is_a_502(aiohttp_client: Any, s3: S3Objects) -> None:
    port = free_port()
    config = build_config(login_config(s3.endpoint, f"http://127.0.0.1:{free_port()}", port))
    server = ProductionLikeServer(Gateway(config), config)
    server.port = port
    client = await aiohttp_client(server)
    answer = await client.get("/_auth/login?next=/stream/photos/42", allow_redirects=False)
    assert answer.status == 502
    assert (await answer.json()) == {"error": "sign-in provider unavailable"}
    # Signing out works without the provider.
    out = await client.post("/_auth/logout", allow_redirects=False)
    assert out.status == 200 and out.cookies["access_token"]["max-age"] == "0"
    post = await client.post("/_auth/login")
    assert post.status == 405


async def test_userinfo_claims_join_the_session(signin_proxy: Start) -> None:
    proxy = await signin_proxy(userinfo=True, claims={"role": "role", "mail": "email"})
    done = await sign_in(proxy, "/admin/exports/q4.pdf", "admin-1")
    claims = jwt.decode(session_cookie(done), options={"verify_signature": False})
    assert claims["mail"] == "admin@example.com" and claims["role"] == "admin"
    assert "groups" not in claims  # only mapped claims are carried
