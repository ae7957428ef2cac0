"""Attacks across the trust boundary (issue 11), each reproduced over real sockets.

Every test here got in (or locked the right people out) before its defence existed: an
uploaded file running script on the proxy's origin, a share link carried to another route or
object, one issuer's users acting as another's, a cached answer shown to the wrong user.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import jwt
import pytest

from proxy.config import ConfigError
from proxy.links import link_target, mint_link_token
from proxy.routing import compile_template

from .conftest import (
    S3Objects,
    bearer,
    build_config,
    config_dict,
    make_token,
    raw_request,
)
from .fakes import FakeStorage

ADMIN = bearer(make_token("root", role="admin"))
LINK_SECRET = "link-secret-" + "q" * 40

# What an uploader may claim an object is; each of these ran script, or could, in a browser.
ACTIVE_TYPES = {
    "exports/evil.xsl": "text/xsl",
    "exports/evil.txt": "text/plain;,text/html",  # browsers take the last type of a list
    "exports/evil.htm": "text/html; charset=utf-8",
    "exports/evil.svg": "image/svg+xml",
    "exports/evil.xml": "application/xml",
    "exports/evil.bin": 'text/plain; x="a,text/html"',
    "exports/evil.mht": "multipart/related",
    "exports/evil.none": "",
}
SCRIPT = b"<html><script>fetch('/me/notes.txt').then(r=>r.text()).then(alert)</script></html>"


@pytest.fixture(scope="module")
def uploads(s3: S3Objects) -> S3Objects:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    for key, content_type in ACTIVE_TYPES.items():
        extra = {"ContentType": content_type} if content_type else {}
        client.put_object(Bucket="reports", Key=key, Body=SCRIPT, **extra)
    client.put_object(
        Bucket="reports", Key="exports/data.csv", Body=b"a,b\n", ContentType="text/csv"
    )
    # what the `%2F` share-link attack reached: another route's object
    client.put_object(Bucket="reports", Key="exports/alice/notes.txt", Body=b"not alice's")
    return s3


def _inert(headers: Any) -> None:
    assert headers["Content-Security-Policy"].startswith("sandbox;")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


# 1. Stored XSS: whatever type S3 names, a streamed body is inert on the proxy's origin.


@pytest.mark.parametrize("key", sorted(ACTIVE_TYPES))
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_uploaded_active_content_is_sandboxed_and_downloaded(
    proxy, uploads: S3Objects, key: str, method: str
) -> None:
    data = config_dict(uploads.endpoint)
    data["routes"][2]["disposition"] = None  # admin-exports, as a route that shows files
    client = await proxy(data)
    response = await client.request(method, "/admin/" + key, headers=ADMIN)
    assert response.status == 200
    _inert(response.headers)
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert "," not in response.headers["Content-Type"]


async def test_a_type_list_is_sent_as_octet_stream(proxy, uploads: S3Objects) -> None:
    client = await proxy()
    response = await client.get("/admin/exports/evil.txt", headers=ADMIN)
    assert response.headers["Content-Type"] == "application/octet-stream"


async def test_the_memory_cache_path_is_as_inert(proxy, uploads: S3Objects) -> None:
    data = config_dict(uploads.endpoint)
    data["routes"][2].update(disposition=None, cache={"max_age": 60})
    client = await proxy(data)
    for _ in range(2):  # the fill, then the hit
        response = await client.get("/admin/exports/evil.xsl", headers=ADMIN)
        _inert(response.headers)
        assert response.headers["Content-Disposition"].startswith("attachment;")


async def test_safe_types_are_shown_inline_but_still_sandboxed(proxy, uploads: S3Objects) -> None:
    client = await proxy()
    photo = await client.get("/stream/photos/42", headers=bearer(make_token()))
    _inert(photo.headers)
    assert "Content-Disposition" not in photo.headers  # <img> and a direct view both work
    notes = await client.get("/me/notes.txt", headers=bearer(make_token()))
    assert notes.headers["Content-Type"] == "text/plain"
    assert "Content-Disposition" not in notes.headers


async def test_a_route_chooses_its_inline_types(proxy, uploads: S3Objects) -> None:
    data = config_dict(uploads.endpoint)
    data["routes"][2].update(disposition="inline", inline_types=["text/csv"])
    client = await proxy(data)
    csv = await client.get("/admin/exports/data.csv", headers=ADMIN)
    assert csv.headers["Content-Disposition"].startswith("inline;")
    # `disposition: inline` does not make an HTML upload showable
    html = await client.get("/admin/exports/evil.htm", headers=ADMIN)
    assert html.headers["Content-Disposition"].startswith("attachment;")
    _inert(html.headers)


async def test_a_wildcard_in_inline_types_shows_no_active_type(proxy, uploads: S3Objects) -> None:
    data = config_dict(uploads.endpoint)
    data["routes"][2].update(disposition=None, inline_types=["image/*", "text/*"])
    client = await proxy(data)
    for key in ("evil.svg", "evil.xsl", "evil.htm"):
        shown = await client.get("/admin/exports/" + key, headers=ADMIN)
        assert shown.headers["Content-Disposition"].startswith("attachment;"), key
    csv = await client.get("/admin/exports/data.csv", headers=ADMIN)
    assert "Content-Disposition" not in csv.headers


def test_inline_types_are_checked_at_load() -> None:
    data = config_dict()
    data["routes"][2]["inline_types"] = ["text/plain,text/html"]
    with pytest.raises(ConfigError, match=r"routes\[2\] \(admin-exports\)\.inline_types"):
        build_config(data)


def _signed_params(location: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(location).query)


async def test_redirects_sign_the_same_policy_into_the_url(proxy, uploads: S3Objects) -> None:
    data = config_dict(uploads.endpoint)
    data["routes"][3]["disposition"] = None  # admin-links, a redirect route
    client = await proxy(data)
    html = await client.get("/admin/links/evil.htm", headers=ADMIN, allow_redirects=False)
    signed = _signed_params(html.headers["Location"])
    assert signed["response-content-disposition"][0].startswith("attachment;")
    pdf = await client.get("/admin/links/q4.pdf", headers=ADMIN, allow_redirects=False)
    signed = _signed_params(pdf.headers["Location"])
    assert signed["response-content-type"] == ["application/pdf"]  # forced, whatever S3 holds
    assert "response-content-disposition" not in signed
    # and S3 honours what was signed
    async with client.session.get(html.headers["Location"]) as got:
        assert got.headers["Content-Disposition"].startswith("attachment;")
    async with client.session.get(pdf.headers["Location"]) as got:
        assert got.headers["Content-Type"] == "application/pdf"


# 2-3. Share links open exactly one object, whatever spelling of the path carries them.

SHARE_ROUTES = [
    {
        "name": "shared-pairs",
        "match": "/share/{user}/{file}",
        "bucket": "user-files",
        "key": "users/{user}/{file}",
        "delivery": "stream",
        "access": {"claims": {"role": "admin"}},
    },
    {
        "name": "shared-exports",
        "match": "/share/{rest:.+}",
        "bucket": "reports",
        "key": "exports/{rest}",
        "delivery": "stream",
        "access": {"claims": {"role": "admin"}},
    },
]


def _share_config(endpoint: str | None, routes: list[dict[str, Any]]) -> dict[str, Any]:
    data = config_dict(endpoint, auth={"link_secret": LINK_SECRET})
    data["routes"] = copy.deepcopy(routes)
    return data


def _link_for(data: dict[str, Any], path: str) -> str:
    target = link_target(build_config(data), path)
    return mint_link_token(LINK_SECRET, target, 600)


async def test_an_encoded_slash_cannot_carry_a_link_to_another_route(
    proxy, uploads: S3Objects
) -> None:
    data = _share_config(uploads.endpoint, SHARE_ROUTES)
    link = _link_for(data, "/share/alice/notes.txt")  # shared-pairs: alice's notes
    client = await proxy(data)
    shared = await client.get("/share/alice/notes.txt", params={"link": link})
    assert (shared.status, await shared.read()) == (200, uploads.notes)
    # `%2F` keeps one segment, so shared-exports matches; its decoded path equals the link's
    status, _, body = await raw_request(client, f"/share/alice%2Fnotes.txt?link={link}")
    assert status == 401
    assert b"not alice's" not in body


async def test_a_link_is_checked_against_the_whole_path(proxy) -> None:
    routes = [
        {
            "name": "two",
            "match": "/t/{a}/{b}",
            "bucket": "reports",
            "key": "{a}/{b}",
            "delivery": "stream",
            "access": {"claims": {"role": "admin"}},
        },
        {
            "name": "three",
            "match": "/t/{a}/{b}/{c}",
            "bucket": "secret",
            "key": "{a}/{b}/{c}",
            "delivery": "stream",
            "access": {"claims": {"role": "admin"}},
        },
    ]
    data = _share_config(None, routes)
    a, b = "a" * 1020, "b" * 1024
    linked = f"/t/{a}/{b}"
    assert len(linked) == 2048  # where the access log cuts paths
    storage = FakeStorage(
        objects={("reports", f"{a}/{b}"): b"shared", ("secret", f"{a}/{b}/c"): b"secret"}
    )
    client = await proxy(data, storage=storage)
    link = _link_for(data, linked)
    assert await (await client.get(linked, params={"link": link})).read() == b"shared"
    longer = await client.get(linked + "/c", params={"link": link})
    assert longer.status == 401
    assert ("get", "secret", f"{a}/{b}/c") not in storage.calls


async def test_old_path_bound_links_are_refused(proxy, s3: S3Objects) -> None:
    # Links minted before binding named only a path (`pth`); they cannot prove their object.
    old = jwt.encode(
        {"aud": "s3-private-proxy/link", "pth": "/admin/exports/q4.pdf", "exp": 2**31},
        LINK_SECRET,
        algorithm="HS256",
    )
    client = await proxy(config_dict(s3.endpoint, auth={"link_secret": LINK_SECRET}))
    assert (await client.get("/admin/exports/q4.pdf", params={"link": old})).status == 401


# 4. Routes say which issuers they trust.

CORP_SECRET, PARTNER_SECRET = "c" * 40, "p" * 40
CORP, PARTNER = "https://corp.example", "https://partner.example"


def _issuers_config(endpoint: str, trusted: list[str] | None = None) -> dict[str, Any]:
    data = config_dict(endpoint)
    data["auth"] = {
        "issuers": [
            {"name": "corp", "issuer": CORP, "algorithms": ["HS256"], "secret": CORP_SECRET},
            {"issuer": PARTNER, "algorithms": ["HS256"], "secret": PARTNER_SECRET},
        ]
    }
    for route in data["routes"]:
        if route["access"] != "public":
            route["issuers"] = trusted or ["corp"]
    return data


def _from(issuer: str, secret: str, **claims: Any) -> dict[str, str]:
    return bearer(make_token(key=secret, iss=issuer, **claims))


async def test_another_issuers_alice_is_not_alice(proxy, s3: S3Objects) -> None:
    client = await proxy(_issuers_config(s3.endpoint))
    mine = await client.get("/me/notes.txt", headers=_from(CORP, CORP_SECRET))
    assert (mine.status, await mine.read()) == (200, s3.notes)
    theirs = await client.get("/me/notes.txt", headers=_from(PARTNER, PARTNER_SECRET))
    assert theirs.status == 403
    admin = _from(PARTNER, PARTNER_SECRET, role="admin")
    assert (await client.get("/admin/exports/q4.pdf", headers=admin)).status == 403
    # the sign API authorizes each path the same way
    signed = await client.post("/_sign", json={"paths": ["/photos/42"]}, headers=admin)
    assert (await signed.json())["results"][0]["status"] == 403


async def test_a_route_may_trust_several_issuers_by_name_or_iss(proxy, s3: S3Objects) -> None:
    client = await proxy(_issuers_config(s3.endpoint, trusted=["corp", PARTNER]))
    for issuer, secret in ((CORP, CORP_SECRET), (PARTNER, PARTNER_SECRET)):
        response = await client.get("/stream/photos/42", headers=_from(issuer, secret))
        assert response.status == 200


def test_several_issuers_need_each_token_route_to_name_its_issuers(s3: S3Objects) -> None:
    data = _issuers_config(s3.endpoint)
    del data["routes"][1]["issuers"]
    with pytest.raises(ConfigError, match=r"routes\[1\] \(photo-stream\)\.issuers: required"):
        build_config(data)
    data = _issuers_config(s3.endpoint, trusted=["nobody"])
    with pytest.raises(ConfigError, match="no issuer named 'nobody'"):
        build_config(data)


def test_the_issuer_can_partition_keys() -> None:
    template = compile_template("tenants/{claims.iss}/{claims.sub}/{path}")
    key = template.render({"path": "a.txt"}, {"iss": "https://idp.example/realms/x", "sub": "al"})
    assert key == "tenants/https%3A%2F%2Fidp.example%2Frealms%2Fx/al/a.txt"


async def test_issuer_in_a_key_over_http(proxy, s3: S3Objects) -> None:
    data = _issuers_config(s3.endpoint)
    data["routes"][4]["key"] = "tenants/{claims.iss}/{claims.sub}/{path}"  # my-files
    storage = FakeStorage(
        objects={("user-files", "tenants/https%3A%2F%2Fcorp.example/alice/n"): b"n"}
    )
    client = await proxy(data, storage=storage)
    assert await (await client.get("/me/n", headers=_from(CORP, CORP_SECRET))).read() == b"n"


# Also: answers that depend on the caller say so, for every cache on the way.


async def test_streamed_answers_vary_on_the_callers_credentials(proxy, s3: S3Objects) -> None:
    client = await proxy()
    token = bearer(make_token())
    first = await client.get("/stream/photos/42", headers=token)
    assert first.headers["Vary"] == "Authorization, Cookie"
    again = await client.get(
        "/stream/photos/42", headers={**token, "If-None-Match": first.headers["ETag"]}
    )
    assert (again.status, again.headers["Vary"]) == (304, "Authorization, Cookie")
    public = await client.get("/public/42")
    assert "Vary" not in public.headers


def test_demo_knows_loopback() -> None:
    from proxy.demo import _is_loopback

    assert all(map(_is_loopback, ["127.0.0.1", "localhost", "::1", "[::1]", "127.9.9.9"]))
    assert not any(map(_is_loopback, ["0.0.0.0", "10.0.0.1", "example.com", "::"]))  # noqa: S104


# The XSS, tried in a real browser: Chromium holds alice's cookie and opens an upload.

XSS_PAGE = (
    b"<html><body>upload<script>fetch('/me/notes.txt').then(r => r.text())"
    b".then(t => { document.title = 'stolen: ' + t })</script></body></html>"
)


async def test_an_uploaded_page_steals_nothing_in_a_real_browser(proxy, uploads: S3Objects) -> None:
    from .test_demo import CHROMIUM, CHROMIUM_ARGS, _chromium_or_skip

    _chromium_or_skip()
    async_api = pytest.importorskip("playwright.async_api")
    boto3.client("s3", endpoint_url=uploads.endpoint, region_name="us-east-1").put_object(
        Bucket="user-files", Key="users/alice/page.html", Body=XSS_PAGE, ContentType="text/html"
    )
    data = config_dict(uploads.endpoint)
    data["routes"][4]["inline_types"] = ["text/html"]  # an operator who lets HTML show
    shown = await proxy(data)
    default = await proxy()
    async with async_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for client in (shown, default):
                base = f"http://127.0.0.1:{client.port}"
                context = await browser.new_context(accept_downloads=True)
                await context.add_cookies(
                    [{"name": "access_token", "value": make_token("alice"), "url": base}]
                )
                page = await context.new_page()
                if client is default:
                    # not a type that may be shown: the browser downloads it, renders nothing
                    async with page.expect_download():
                        with contextlib.suppress(async_api.Error):
                            await page.goto(f"{base}/me/page.html")
                else:
                    await page.goto(f"{base}/me/page.html")
                    assert "upload" in await page.content()  # it did render...
                    await page.wait_for_load_state("networkidle")  # the fetch, had it run
                    assert "stolen" not in await page.title()  # ...and its script never ran
                await context.close()
        finally:
            await browser.close()


# 5-7, the rest of their class: exhausting the proxy without a valid request.


async def test_a_trickled_request_body_is_408_not_a_held_connection(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint, limits={"body_timeout": 0.3}))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = (
        "POST /_sign HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n"
    )
    writer.write(head.encode() + b'{"paths": [')  # ...and nothing more
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)  # answered, then closed
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert answer.endswith(b'{"error": "request timeout"}')


async def test_another_issuers_alice_cannot_spend_alices_limits(proxy, s3: S3Objects) -> None:
    data = _issuers_config(s3.endpoint, trusted=["corp", PARTNER])
    data["limits"] = {"rate_limit": {"per_subject": {"rate": 0.001, "burst": 2}}}
    client = await proxy(data)
    theirs = _from(PARTNER, PARTNER_SECRET)
    statuses = [(await client.get("/stream/photos/42", headers=theirs)).status for _ in range(3)]
    assert statuses == [200, 200, 429]  # the partner's alice spent her own bucket...
    mine = await client.get("/stream/photos/42", headers=_from(CORP, CORP_SECRET))
    assert mine.status == 200  # ...not corp's alice's


async def test_every_proxy_answer_is_nosniff(proxy, s3: S3Objects) -> None:
    client = await proxy()
    for response in (
        await client.get("/nowhere"),
        await client.get("/stream/photos/42"),
        await client.post("/_sign", json={"paths": ["/photos/1"]}),
        await client.get(
            "/photos/1", headers={**bearer(make_token()), "Accept": "application/json"}
        ),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.url
