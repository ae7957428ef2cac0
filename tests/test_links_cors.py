"""Share links (python -m proxy link) and CORS for cross-origin pages, over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.links import link_target, mint_link_token

from .conftest import SECRET, Clock, S3Objects, bearer, build_config, config_dict, make_token

LINK_SECRET = "link-secret-" + "z" * 40
T0 = 1_900_000_000
REPO = Path(__file__).resolve().parent.parent


def _with_links(s3: S3Objects) -> dict[str, Any]:
    return config_dict(s3.endpoint, auth={"link_secret": LINK_SECRET})


def _mint(path: str, ttl: int, secret: str = LINK_SECRET, **kwargs: Any) -> str:
    """A link for `path` on the test config, minted as `python -m proxy link` does."""
    target = link_target(build_config(config_dict()), path, kwargs.get("sub"))
    return mint_link_token(secret, target, ttl, **kwargs)


def _run_link(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "link", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=dict(os.environ),
    )


async def test_cli_link_opens_exactly_one_admin_only_file(
    proxy, s3: S3Objects, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_with_links(s3)))
    result = _run_link(
        config,
        "/admin/exports/q4.pdf",
        "--ttl",
        "600",
        "--sub",
        "alice",
        "--base-url",
        "https://files.example.com",
    )
    assert result.returncode == 0, result.stderr
    url = urlsplit(result.stdout.strip())
    assert (url.scheme, url.netloc, url.path) == (
        "https",
        "files.example.com",
        "/admin/exports/q4.pdf",
    )
    client = await proxy(_with_links(s3))
    shared = await client.get(f"{url.path}?{url.query}")
    assert shared.status == 200
    assert await shared.read() == s3.report  # although the link carries no admin role
    head = await client.head(f"{url.path}?{url.query}")
    assert head.status == 200
    other = await client.get(f"/admin/exports/big.bin?{url.query}")
    assert other.status == 401


async def test_link_expires(proxy, s3: S3Objects) -> None:
    clock = Clock(T0)
    client = await proxy(_with_links(s3), clock=clock)
    token = _mint("/admin/exports/q4.pdf", 60, now=T0)
    assert (await client.get("/admin/exports/q4.pdf", params={"link": token})).status == 200
    clock.now += 60 + 30  # past exp and the 30 s leeway
    assert (await client.get("/admin/exports/q4.pdf", params={"link": token})).status == 401


async def test_link_goes_through_the_routes_normal_delivery(proxy, s3: S3Objects) -> None:
    client = await proxy(_with_links(s3))
    token = _mint("/admin/links/q4.pdf", 60)
    response = await client.get(
        "/admin/links/q4.pdf", params={"link": token}, allow_redirects=False
    )
    assert response.status == 302


@pytest.mark.parametrize(
    "token",
    [
        _mint("/admin/exports/q4.pdf", 60, secret=SECRET),  # wrong secret
        make_token(role="admin"),  # an access token is not a link
        "garbage",
    ],
)
async def test_anything_but_a_link_for_this_path_is_401(proxy, s3: S3Objects, token) -> None:
    client = await proxy(_with_links(s3))
    response = await client.get("/admin/exports/q4.pdf", params={"link": token})
    assert response.status == 401


async def test_a_link_is_not_an_access_token(proxy, s3: S3Objects) -> None:
    client = await proxy(_with_links(s3))
    token = _mint("/admin/exports/q4.pdf", 60)
    response = await client.get("/admin/exports/q4.pdf", headers=bearer(token))
    assert response.status == 401


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/nowhere", "no route matches"),
        ("/admin/exports/../../x", "'..' segment"),
        ("/me/notes.txt", "pass --sub"),
    ],
)
def test_cli_link_refuses_paths_it_cannot_share(
    s3: S3Objects, tmp_path: Path, path: str, message: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_with_links(s3)))
    result = _run_link(config, path)
    assert result.returncode == 2
    assert message in result.stderr


def test_cli_link_needs_a_link_secret(s3: S3Objects, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_dict(s3.endpoint)))
    result = _run_link(config, "/admin/exports/q4.pdf")
    assert result.returncode == 2
    assert "auth.link_secret is not set" in result.stderr
    assert "link_secret: ${LINK_SECRET:-}` under auth" in result.stderr


README_LINK = (
    "/admin/exports/q4.pdf",
    "--ttl",
    "600",
    "--sub",
    "alice",
    "--base-url",
    "https://files.example.com",
)


@pytest.mark.parametrize("link_secret", [None, ""], ids=["unset", "empty"])
def test_readme_link_example_without_link_secret_says_how_to_make_one(
    link_secret: str | None,
) -> None:
    env = {**os.environ, "JWT_SECRET": SECRET}
    env.pop("LINK_SECRET", None)
    if link_secret is not None:
        env["LINK_SECRET"] = link_secret
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "link", "--config", "config.yaml", *README_LINK],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 2
    assert "auth.link_secret is not set (or empty) in config.yaml" in result.stderr
    assert (
        "export LINK_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(64))')"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_readme_link_example_works_on_the_shipped_config_with_link_secret_exported() -> None:
    env = {**os.environ, "JWT_SECRET": SECRET, "LINK_SECRET": LINK_SECRET}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "link", "--config", "config.yaml", *README_LINK],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("https://files.example.com/admin/exports/q4.pdf?link=ey")


# CORS

APP = "https://app.example.com"


def _with_cors(s3: S3Objects, **cors: Any) -> dict[str, Any]:
    data = config_dict(s3.endpoint)
    data["routes"][1]["cors"] = {"origins": [APP], "credentials": True, **cors}
    return data


async def test_preflight_from_an_allowed_origin(proxy, s3: S3Objects) -> None:
    client = await proxy(_with_cors(s3, max_age=900))
    response = await client.options(
        "/stream/photos/42",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, range",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Allow-Methods"] == "GET, HEAD"
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert "Range" in response.headers["Access-Control-Allow-Headers"]
    assert response.headers["Access-Control-Max-Age"] == "900"


@pytest.mark.parametrize(("origin", "method"), [("https://evil.example", "GET"), (APP, "DELETE")])
async def test_preflight_refused(proxy, s3: S3Objects, origin: str, method: str) -> None:
    client = await proxy(_with_cors(s3))
    response = await client.options(
        "/stream/photos/42", headers={"Origin": origin, "Access-Control-Request-Method": method}
    )
    assert response.status == 403
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_cross_origin_get_and_its_errors_carry_cors_headers(proxy, s3: S3Objects) -> None:
    client = await proxy(_with_cors(s3))
    ok = await client.get("/stream/photos/42", headers={"Origin": APP, **bearer(make_token())})
    assert ok.status == 200
    assert await ok.read() == s3.photo
    assert ok.headers["Access-Control-Allow-Origin"] == APP
    assert "Content-Length" in ok.headers["Access-Control-Expose-Headers"]
    assert "Origin" in ok.headers["Vary"]
    denied = await client.get("/stream/photos/42", headers={"Origin": APP})
    assert denied.status == 401
    assert denied.headers["Access-Control-Allow-Origin"] == APP  # the page can read the 401


async def test_other_origins_get_no_cors_grant(proxy, s3: S3Objects) -> None:
    client = await proxy(_with_cors(s3))
    response = await client.get(
        "/stream/photos/42", headers={"Origin": "https://evil.example", **bearer(make_token())}
    )
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.headers["Vary"] == "Authorization, Cookie, Origin"


async def test_routes_without_cors_refuse_options(proxy) -> None:
    client = await proxy()
    response = await client.options(
        "/stream/photos/42", headers={"Origin": APP, "Access-Control-Request-Method": "GET"}
    )
    assert response.status == 405


async def test_sign_api_can_be_called_cross_origin(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint, sign_api={"cors": {"origins": [APP]}}))
    preflight = await client.options(
        "/_sign", headers={"Origin": APP, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
    response = await client.post(
        "/_sign", json={"paths": ["/photos/1"]}, headers={"Origin": APP, **bearer(make_token())}
    )
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP


async def test_a_redirect_keeps_its_own_vary_and_adds_origin(proxy, s3: S3Objects) -> None:
    data = config_dict(s3.endpoint)
    data["routes"][0]["cors"] = {"origins": [APP]}  # employee-photos, a redirect route
    client = await proxy(data)
    response = await client.get(
        "/photos/42", headers={"Origin": APP, **bearer(make_token())}, allow_redirects=False
    )
    assert response.status == 302
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["Vary"] == "Accept, Authorization, Cookie, Origin"


async def test_a_304_from_s3_carries_cors_headers(proxy, s3: S3Objects) -> None:
    client = await proxy(_with_cors(s3))
    first = await client.get("/stream/photos/42", headers={"Origin": APP, **bearer(make_token())})
    again = await client.get(
        "/stream/photos/42",
        headers={"Origin": APP, "If-None-Match": first.headers["ETag"], **bearer(make_token())},
    )
    assert again.status == 304
    assert again.headers["Access-Control-Allow-Origin"] == APP
    assert again.headers["Vary"] == "Authorization, Cookie, Origin"  # as the 200's
