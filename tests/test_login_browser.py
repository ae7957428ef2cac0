"""Browser sign-in in real Chromium (Debian's /usr/bin/chromium, driven by Playwright; never
a downloaded browser): a fresh browser opens an admin-only link, signs in at a real OpenID
Connect provider on loopback, and lands on the file; an employee ends in 403; `<img>` tags
on a page of the proxy render once signed in (and before, get 401, not a login page)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web

from proxy.app import Gateway
from proxy.demo.images import portrait_png
from tests.conftest import ProductionLikeServer, S3Objects, build_config
from tests.oidc_provider import login_config
from tests.oidc_provider import provider as provider  # a fixture: module-scoped provider
from tests.running import free_port
from tests.test_demo import CHROMIUM, CHROMIUM_ARGS, _chromium_or_skip

PHOTOS = 3
GALLERY = "".join(f'<img id="p{n}" src="/signin-photos/{n}" alt="">' for n in range(1, 4))


@pytest.fixture
async def base(aiohttp_client: Any, s3: S3Objects, provider: str) -> str:
    """The proxy with sign-in, an image route, and a page of images (`/gallery`)."""
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="signin-photos")
    for n in range(1, PHOTOS + 1):
        client.put_object(
            Bucket="signin-photos",
            Key=f"{n}.png",
            Body=portrait_png(48 + 16 * n, n),
            ContentType="image/png",
        )
    port = free_port()
    data = login_config(s3.endpoint, provider, port)
    data["routes"].append(
        {
            "name": "signin-photos",
            "match": "/signin-photos/{n}",
            "bucket": "signin-photos",
            "key": "{n}.png",
            "delivery": "stream",
            "access": "authenticated",
            "issuers": ["bearer", "login"],
        }
    )
    config = build_config(data)
    gateway = Gateway(config)

    async def gallery(request: web.BaseRequest) -> web.Response:
        return web.Response(
            text=f"<!doctype html><title>t</title>{GALLERY}", content_type="text/html"
        )

    gateway.add_pages({"/gallery": gallery})
    server = ProductionLikeServer(gateway, config)
    server.port = port
    await aiohttp_client(server)
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    _chromium_or_skip()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def widths(page: Any) -> list[int]:
    await page.wait_for_function("[...document.images].every(i => i.complete)")
    found: list[int] = await page.evaluate("[...document.images].map(i => i.naturalWidth)")
    return found


async def test_an_admin_opens_a_link_signs_in_and_downloads_the_file(
    base: str, provider: str, browser: Any, s3: S3Objects, tmp_path: Path
) -> None:
    context = await browser.new_context(accept_downloads=True)
    page = await context.new_page()
    link = base + "/admin/exports/q4.pdf"
    await page.goto(link)
    assert page.url.startswith(provider + "/oauth2/authorize?")  # the provider's form
    async with page.expect_download() as download_info:
        await page.click('button[name="sub"][value="admin-1"]')
    download = await download_info.value
    assert download.url == link  # back on the link it opened
    assert download.suggested_filename == "q4.pdf"
    saved = tmp_path / "q4.pdf"
    await download.save_as(saved)
    assert saved.read_bytes() == s3.report
    cookies = {c["name"]: c for c in await context.cookies(base)}
    assert cookies["access_token"]["httpOnly"] and cookies["access_token"]["sameSite"] == "Lax"
    assert not any(name.startswith("signin_") for name in cookies)  # the flow cookie is spent
    await context.close()


async def test_an_employee_signs_in_and_gets_403(base: str, browser: Any) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    link = base + "/admin/exports/q4.pdf"
    await page.goto(link)
    async with page.expect_response(link) as answer_info:
        await page.click('button[name="sub"][value="employee-7"]')
    answer = await answer_info.value
    assert answer.status == 403
    await page.wait_for_url(link)
    assert "forbidden" in await page.content()
    await context.close()


async def test_images_on_a_page_render_after_sign_in_and_never_redirect(
    base: str, provider: str, browser: Any, tmp_path: Path
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    statuses: list[int] = []
    page.on(
        "response",
        lambda response: (
            statuses.append(response.status) if "/signin-photos/" in response.url else None
        ),
    )
    await page.goto(base + "/gallery")
    assert await widths(page) == [0] * PHOTOS  # not signed in: 401 each, no login page
    assert statuses == [401] * PHOTOS

    # Sign in by hand (a "Sign in" link would point here), then back to the page.
    await page.goto(base + "/_auth/login?next=/gallery")
    await page.click('button[name="sub"][value="employee-7"]')
    await page.wait_for_url(base + "/gallery")
    assert await widths(page) == [48 + 16 * n for n in range(1, PHOTOS + 1)]
    await page.screenshot(path=str(tmp_path / "gallery.png"))

    # Signed out, the images are refused again.
    await page.goto(base + "/_auth/logout")  # a page with a button: a GET signs no one out
    async with page.expect_navigation(url=lambda url: url.startswith(provider)):
        await page.click('button[name="sign-out"]')
    assert page.url.startswith(provider + "/oauth2/end_session")
    await page.goto(base + "/gallery")
    assert await widths(page) == [0] * PHOTOS
    await context.close()
