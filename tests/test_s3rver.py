"""Presigned URLs against s3rver, which (unlike moto) refuses expired URLs.

s3rver checks X-Amz-Date + X-Amz-Expires but not the SigV4 signature itself (its V4
signature check is unimplemented), so signatures are still verified by tests/sigv4.py.
Installed by scripts/test.sh with npm; skipped with a message where Node is unavailable.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import Clock, bearer, config_dict, make_token
from .node_s3 import running_node_s3

S3RVER = Path(__file__).parent / "s3rver" / "node_modules" / "s3rver" / "bin" / "s3rver.js"
PHOTO = b"\xff\xd8 a small jpeg-ish body"


@pytest.fixture(scope="module")
def s3rver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    node = shutil.which("node")
    if node is None or not S3RVER.exists():
        pytest.skip("s3rver is not installed (needs Node.js; scripts/test.sh installs it with npm)")
    data = tmp_path_factory.mktemp("s3rver")
    log = data.parent / f"{data.name}.log"
    command = [
        node,
        str(S3RVER),
        "-d",
        str(data),
        "-a",
        "127.0.0.1",
        "-p",
        "0",
        "--configure-bucket",
        "hr-private",
    ]
    with running_node_s3(command, log) as (endpoint, client):
        client.put_object(Bucket="hr-private", Key="employees/42/photo.jpg", Body=PHOTO)
        yield endpoint


@pytest.fixture
def s3rver_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "S3RVER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S3RVER")


async def _follow(client: Any, path: str, now: float) -> tuple[int, bytes, str]:
    response = await client.get(
        path, headers=bearer(make_token(now=now, ttl=86_400)), allow_redirects=False
    )
    assert response.status == 302
    location = response.headers["Location"]
    async with aiohttp.ClientSession() as plain, plain.get(location) as got:
        return got.status, await got.read(), location


async def test_fresh_url_is_served_and_expired_url_is_refused(
    proxy, s3rver: str, s3rver_credentials: None
) -> None:
    clock = Clock(time.time())
    client = await proxy(config_dict(s3rver), clock=clock)
    assert (await _follow(client, "/photos/42", clock.now))[:2] == (200, PHOTO)
    clock.now = time.time() - 301  # signed 301 s ago, with ttl 300
    status, body, _ = await _follow(client, "/photos/42", clock.now)
    assert status == 403
    assert b"Request has expired" in body


async def test_backdated_stable_url_is_valid_until_window_end_plus_ttl(
    proxy, s3rver: str, s3rver_credentials: None
) -> None:
    now = time.time()
    window_start = int(now // 3600 * 3600)
    clock = Clock(now)
    client = await proxy(config_dict(s3rver), clock=clock)
    status, _, location = await _follow(client, "/stable/photos/42", clock.now)
    signed_at = datetime.fromtimestamp(window_start, UTC).strftime("%Y%m%dT%H%M%SZ")
    assert f"X-Amz-Date={signed_at}" in location  # signed at the window start, in the past
    assert status == 200
    # a window whose end plus ttl has passed: refused by S3
    clock.now = now - 3600 - 300 - 3600 - 1
    assert (await _follow(client, "/stable/photos/42", clock.now))[0] == 403
