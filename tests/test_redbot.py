"""REDbot, the HTTP linter, against the live proxy on loopback: no BAD note anywhere, and no
WARN note outside a short list of warnings that are right for a private-file server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from proxy.links import link_target, mint_link_token

from .conftest import S3Objects, build_config, config_dict, make_token

LINTER = Path(__file__).with_name("redbot_lint.py")
LINK_SECRET = "link-secret-" + "r" * 40
ALICE = f"Authorization: Bearer {make_token('alice')}"
ADMIN = f"Authorization: Bearer {make_token('alice', role='admin')}"

# Warnings that describe a deliberate choice; each says why it is right here. (Empty: REDbot
# finds nothing to warn about on these answers. Keep additions short and argued.)
ALLOWED_WARNINGS: dict[str, str] = {}
# Bodies that are what their Content-Type says (REDbot sniffs them) and longer than REDbot's
# 96-byte range probe (on a shorter body its range covers everything and it warns).
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4 + b"\xff\xd9"
PDF = b"%PDF-1.4\n" + b"% quarterly numbers\n" * 60 + b"%%EOF\n"


@pytest.fixture(scope="module")
def lint_objects(s3: S3Objects) -> None:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    client.put_object(
        Bucket="hr-private", Key="employees/7/photo.jpg", Body=JPEG, ContentType="image/jpeg"
    )
    client.put_object(
        Bucket="reports", Key="exports/lint.pdf", Body=PDF, ContentType="application/pdf"
    )


async def redbot(url: str, method: str = "GET", *headers: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(LINTER),
        url,
        method,
        *headers,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, (stdout + stderr).decode(errors="replace")
    result: dict[str, Any] = json.loads(stdout)
    return result


CASES = [
    # (name, path, method, headers, expected status)
    ("stream", "/stream/photos/7", "GET", (ALICE,), 200),
    ("stream HEAD", "/stream/photos/7", "HEAD", (ALICE,), 200),
    ("public stream", "/public/7", "GET", (), 200),
    ("download", "/admin/exports/lint.pdf", "GET", (ADMIN,), 200),
    ("redirect", "/photos/7", "GET", (ALICE,), 302),
    ("JSON link", "/photos/7", "GET", (ALICE, "Accept: application/json"), 200),
    ("share link", "share", "GET", (), 200),
    ("404", "/stream/photos/nobody", "GET", (ALICE,), 404),
    ("401", "/stream/photos/7", "GET", (), 401),
    ("403", "/admin/exports/lint.pdf", "GET", (ALICE,), 403),
]


@pytest.mark.parametrize(
    ("name", "path", "method", "headers", "status"), CASES, ids=[c[0] for c in CASES]
)
async def test_redbot_finds_nothing_wrong(
    proxy,
    s3: S3Objects,
    lint_objects: None,
    name: str,
    path: str,
    method: str,
    headers: tuple[str, ...],
    status: int,
) -> None:
    data = config_dict(s3.endpoint, auth={"link_secret": LINK_SECRET})
    client = await proxy(data)
    if path == "share":
        target = link_target(build_config(data), "/admin/exports/lint.pdf")
        token = mint_link_token(LINK_SECRET, target, 600)
        path = f"/admin/exports/lint.pdf?link={token}"
    result = await redbot(f"http://127.0.0.1:{client.server.port}{path}", method, *headers)
    assert result["status"] == status
    assert result["notes"], "REDbot said nothing: the check did not run"
    bad = [n for n in result["notes"] if n["level"] == "bad"]
    warned = [
        n for n in result["notes"] if n["level"] == "warning" and n["id"] not in ALLOWED_WARNINGS
    ]
    assert not bad, bad
    assert not warned, warned
