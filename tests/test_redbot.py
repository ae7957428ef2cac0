"""REDbot, the HTTP linter, against the live proxy on loopback, on every surface it has
(downloads, redirects, links, uploads by stream and by redirect, the admin endpoint, the sign
API, sign-in and their refusals): no BAD note anywhere, and no WARN note outside a short list
of warnings that are right for a private-file server."""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from proxy.links import link_target, mint_link_token

from .conftest import S3Objects, build_config, config_dict, make_token
from .oidc_provider import login_config
from .running import free_port
from .test_upload_redirect import REDIRECT_ROUTE
from .test_uploads import UPLOAD_ROUTES

LINTER = Path(__file__).with_name("redbot_lint.py")
LINK_SECRET = "link-secret-" + "r" * 40
ALICE = f"Authorization: Bearer {make_token('alice')}"
ADMIN = f"Authorization: Bearer {make_token('alice', role='admin')}"

# Warnings that describe a deliberate choice; each says why it is right here. Keep additions
# short and argued.
ALLOWED_WARNINGS: dict[str, str] = {
    # REDbot warns on every 400 ("the server didn't understand the request"), whatever the
    # answer says: the requests linted with it are malformed on purpose (a body that is not
    # JSON, a sign-in callback without its state, a `next` off this proxy), 400 is RFC 9110's
    # status for them, and the JSON body says what was wrong.
    "STATUS_BAD_REQUEST": "a 400 to a request malformed on purpose",
}
# Bodies that are what their Content-Type says (REDbot sniffs them) and longer than REDbot's
# 96-byte range probe (on a shorter body its range covers everything and it warns).
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4 + b"\xff\xd9"
PDF = b"%PDF-1.4\n" + b"% quarterly numbers\n" * 60 + b"%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2
EXISTING = "lint/existing.png"  # on the upload routes, there before each run


@pytest.fixture(scope="module")
def lint_objects(s3: S3Objects) -> None:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    client.put_object(
        Bucket="hr-private", Key="employees/7/photo.jpg", Body=JPEG, ContentType="image/jpeg"
    )
    client.put_object(
        Bucket="reports", Key="exports/lint.pdf", Body=PDF, ContentType="application/pdf"
    )


def existing_upload(s3: S3Objects) -> None:
    """The object the replace, 409 and 412 cases find at their key."""
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    client.put_object(
        Bucket="user-files", Key=f"uploads/alice/{EXISTING}", Body=PNG, ContentType="image/png"
    )


async def redbot(url: str, method: str = "GET", *headers: str, body: bytes = b"") -> Any:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(LINTER),
        url,
        method,
        *headers,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate(body)
    assert process.returncode == 0, (stdout + stderr).decode(errors="replace")
    result: dict[str, Any] = json.loads(stdout)
    return result


def lint_config(endpoint: str) -> dict[str, Any]:
    """The suite's usual routes, plus uploads (by stream and by redirect, one with a tiny
    max_bytes), share links, the admin endpoint, and a sign API that takes 10 paths."""
    data = config_dict(
        endpoint,
        auth={"link_secret": LINK_SECRET},
        admin={"access": {"claims": {"role": "admin"}}},
        sign_api={"max_paths": 10},
    )
    tiny = copy.deepcopy(UPLOAD_ROUTES[1])
    tiny.update(name="tiny-uploads", match="/tiny/{path:.+}")
    tiny["upload"]["max_bytes"] = 16
    routes = [*copy.deepcopy(UPLOAD_ROUTES), tiny, copy.deepcopy(REDIRECT_ROUTE)]
    data["routes"] = routes + data["routes"]
    return data


def sign_in_config(endpoint: str) -> dict[str, Any]:
    """Sign-in through a provider that is down: every sign-in refusal is reachable, and no
    provider is needed to reach them."""
    return login_config(endpoint, f"http://127.0.0.1:{free_port()}", free_port())


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    status: int
    method: str = "GET"
    headers: tuple[str, ...] = ()
    body: bytes = b""
    config: str = "lint"  # or "sign-in"


def upload(name: str, path: str, status: int, *headers: str, body: bytes = PNG) -> Case:
    sent = (ALICE, "Content-Type: image/png", f"Content-Length: {len(body)}", *headers)
    return Case(name, path, status, "PUT", sent, body)


def sign(name: str, status: int, *headers: str, body: bytes = b"") -> Case:
    return Case(name, "/_sign", status, "POST", (*headers, f"Content-Length: {len(body)}"), body)


NAVIGATION = ("Sec-Fetch-Mode: navigate", "Sec-Fetch-Dest: document", "Accept: text/html")
CASES = [
    # Downloads
    Case("stream", "/stream/photos/7", 200, headers=(ALICE,)),
    Case("stream HEAD", "/stream/photos/7", 200, "HEAD", (ALICE,)),
    Case("public stream", "/public/7", 200),
    Case("download", "/admin/exports/lint.pdf", 200, headers=(ADMIN,)),
    Case("redirect", "/photos/7", 302, headers=(ALICE,)),
    Case("redirect HEAD", "/photos/7", 302, "HEAD", (ALICE,)),
    Case("JSON link", "/photos/7", 200, headers=(ALICE, "Accept: application/json")),
    Case("share link", "share", 200),
    Case("404", "/stream/photos/nobody", 404, headers=(ALICE,)),
    Case("401", "/stream/photos/7", 401),
    Case("403", "/admin/exports/lint.pdf", 403, headers=(ALICE,)),
    Case("405", "/stream/photos/7", 405, "DELETE", (ALICE,)),
    # Uploads by stream: created, replaced, and each refusal
    upload("upload 201", "/upw/lint/new-{id}.png", 201),
    upload("upload 200", f"/upw/{EXISTING}", 200),
    upload("upload 409", f"/up/{EXISTING}", 409),
    upload("upload 412", f"/upw/{EXISTING}", 412, 'If-Match: "nope"'),
    upload("upload 412 If-None-Match", f"/upw/{EXISTING}", 412, "If-None-Match: *"),
    upload("upload 413", "/tiny/lint/big.png", 413),
    Case(
        "upload 415",
        "/upw/lint/page.html",
        415,
        "PUT",
        (ALICE, "Content-Type: text/html", "Content-Length: 4"),
        b"<p/>",
    ),
    # Uploads by redirect
    Case(
        "upload 307",
        "/direct/lint/r-{id}.txt",
        307,
        "PUT",
        (ALICE, "Content-Type: text/plain", "Content-Length: 5"),
        b"hello",
    ),
    # The admin endpoint
    Case("admin list", "/_admin/revocations", 200, headers=(ADMIN,)),
    Case("admin HEAD", "/_admin/revocations", 200, "HEAD", (ADMIN,)),
    Case(
        "admin 201",
        "/_admin/revocations",
        201,
        "POST",
        (ADMIN, "Content-Type: application/json", "Content-Length: 20"),
        b'{"jti": "lint-1234"}',
    ),
    Case("admin 404", "/_admin/revocations?jti=nobody", 404, headers=(ADMIN,)),
    Case("admin 403", "/_admin/revocations", 403, headers=(ALICE,)),
    Case("admin 405", "/_admin/revocations", 405, "PUT", (ADMIN, "Content-Length: 0")),
    # The sign API and its refusals
    sign(
        "sign 200", 200, ALICE, "Content-Type: application/json", body=b'{"paths": ["/photos/7"]}'
    ),
    sign("sign 400", 400, ALICE, "Content-Type: application/json", body=b"{"),
    # Each entry carries its own 401; the batch is 200.
    sign(
        "sign 200 refused", 200, "Content-Type: application/json", body=b'{"paths": ["/photos/7"]}'
    ),
    sign(
        "sign 413",
        413,
        ALICE,
        "Content-Type: application/json",
        body=json.dumps({"paths": ["/photos/7"] * 11}).encode(),
    ),
    sign("sign 415", 415, ALICE, "Content-Type: text/plain", body=b"x"),
    Case("sign 405", "/_sign", 405, headers=(ALICE,)),
    # Sign-in and its refusals (the provider is down)
    Case("sign-in 302", "/stream/photos/7", 302, headers=NAVIGATION, config="sign-in"),
    Case("sign-in 400", "/_auth/login?next=https://elsewhere.example/", 400, config="sign-in"),
    Case("sign-in callback 400", "/_auth/callback", 400, config="sign-in"),
    Case("sign-in 502", "/_auth/login?next=/stream/photos/7", 502, config="sign-in"),
    Case("sign-in 405", "/_auth/login", 405, "POST", ("Content-Length: 0",), config="sign-in"),
    Case("sign-out page", "/_auth/logout", 200, config="sign-in"),
    Case(
        "sign-out",
        "/_auth/logout",
        200,
        "POST",
        ("Content-Length: 0", "Sec-Fetch-Site: same-origin"),
        config="sign-in",
    ),
    Case(
        "sign-out 403",
        "/_auth/logout",
        403,
        "POST",
        ("Content-Length: 0", "Sec-Fetch-Site: cross-site"),
        config="sign-in",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_redbot_finds_nothing_wrong(
    proxy, s3: S3Objects, lint_objects: None, case: Case
) -> None:
    existing_upload(s3)
    data = lint_config(s3.endpoint) if case.config == "lint" else sign_in_config(s3.endpoint)
    client = await proxy(data)
    path = case.path.replace("{id}", uuid.uuid4().hex)
    if path == "share":
        target = link_target(build_config(data), "/admin/exports/lint.pdf")
        token = mint_link_token(LINK_SECRET, target, 600)
        path = f"/admin/exports/lint.pdf?link={token}"
    url = f"http://127.0.0.1:{client.server.port}{path}"
    result = await redbot(url, case.method, *case.headers, body=case.body)
    assert result.get("status") == case.status, result
    assert result["notes"], "REDbot said nothing: the check did not run"
    bad = [n for n in result["notes"] if n["level"] == "bad"]
    warned = [
        n for n in result["notes"] if n["level"] == "warning" and n["id"] not in ALLOWED_WARNINGS
    ]
    assert not bad, bad
    assert not warned, warned
