"""Faults caused for real on loopback: S3 failing, hanging, dying mid-stream; clients that
vanish or stall. The proxy answers 502/504, aborts rather than truncates, leaks nothing and
recovers when S3 does."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.engines import create_engine

from .conftest import S3Objects, bearer, build_config, config_dict, make_token
from .faulty_s3 import FaultyS3

pytestmark = pytest.mark.both_engines

ADMIN = bearer(make_token("root", role="admin"))


@pytest.fixture
async def faulty(s3: S3Objects) -> AsyncIterator[FaultyS3]:
    server = FaultyS3(upstream=s3.endpoint)
    await server.start()
    yield server
    await server.close()


def _config(endpoint: str, **s3: Any) -> dict[str, Any]:
    return config_dict(
        endpoint, s3={"read_timeout": 0.5, "connect_timeout": 0.5, "request_timeout": 2, **s3}
    )


async def test_the_proxy_recovers_when_s3_does(proxy, s3: S3Objects, faulty: FaultyS3) -> None:
    client = await proxy(_config(faulty.url))
    for mode, status in (("ok", 200), ("error", 502), ("refuse", 502), ("hang", 504), ("ok", 200)):
        faulty.mode = mode
        response = await client.get("/admin/exports/q4.pdf", headers=ADMIN)
        body = await response.read()
        assert response.status == status, mode
        if status == 200:
            assert body == s3.report
        else:
            assert b"boom" not in body and b"InternalError" not in body


async def test_retries_happen_only_before_the_response_starts(
    proxy, s3: S3Objects, faulty: FaultyS3
) -> None:
    client = await proxy(_config(faulty.url, max_attempts=3, request_timeout=30))
    faulty.mode = "error"
    response = await client.get("/admin/exports/q4.pdf", headers=ADMIN)
    assert response.status == 502
    assert faulty.requests == 3, faulty.paths  # botocore retried the failed call before answering
    faulty.requests = 0
    faulty.mode = "die_mid_stream"
    response = await client.get("/admin/exports/big.bin", headers=ADMIN)
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    assert faulty.requests == 1  # a started stream is never retried


async def test_s3_dying_mid_stream_aborts_the_client_and_is_logged(
    proxy, s3: S3Objects, faulty: FaultyS3, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    client = await proxy(_config(faulty.url))
    faulty.mode = "die_mid_stream"
    response = await client.get("/admin/exports/big.bin", headers=ADMIN)
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(s3.big))
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    faulty.mode = "ok"
    again = await client.get("/admin/exports/big.bin", headers=ADMIN)
    assert await again.read() == s3.big
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
    assert lines[0]["reason"].startswith("upstream failed mid-stream")
    assert lines[0]["bytes"] < len(s3.big)
    assert client.server.gateway.streams.in_use == 0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_two_hundred_aborted_downloads_leak_nothing(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint, s3={"max_connections": 8}))
    host, port = client.server.host, client.server.port
    token = make_token("root", role="admin")

    async def abort_one() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"GET /admin/exports/big.bin HTTP/1.1\r\nHost: p\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        await writer.drain()
        await reader.readexactly(70_000)  # headers and some body, then vanish
        writer.transport.abort()

    # warm up pools, then measure
    for _ in range(5):
        await abort_one()
    await asyncio.sleep(0.2)
    fds_before, tasks_before = _open_fds(), len(asyncio.all_tasks())
    for _ in range(200):
        await abort_one()
    # A leak would grow by about one fd and one task per download (200); allow a little
    # slack for moto's server threads and garbage not yet collected.
    for _ in range(50):  # let the server notice the last disconnects
        gc.collect()
        if client.server.gateway.streams.in_use == 0 and _open_fds() <= fds_before + 16:
            break
        await asyncio.sleep(0.1)
    assert client.server.gateway.streams.in_use == 0
    assert _open_fds() <= fds_before + 16
    assert len(asyncio.all_tasks()) <= tasks_before + 2
    ok = await client.get("/admin/exports/q4.pdf", headers=bearer(token))
    assert await ok.read() == s3.report  # the S3 pool still has connections to give


async def test_a_client_that_stops_reading_is_dropped(
    proxy, s3: S3Objects, caplog: pytest.LogCaptureFixture
) -> None:
    """Clients that never read must not pin the S3 pool: with a pool of 2 and two stalled
    clients, a third request is still served once the write timeout frees the slots."""
    caplog.set_level(logging.INFO, logger="proxy.access")
    data = config_dict(
        s3.endpoint,
        s3={"max_connections": 2, "request_timeout": 10},
        limits={"client_write_timeout": 0.5},
    )
    client = await proxy(data)
    host, port = client.server.host, client.server.port
    token = make_token("root", role="admin")
    stalled = []
    for _ in range(2):
        _reader, writer = await asyncio.open_connection(host, port, limit=1024)
        writer.write(
            f"GET /admin/exports/huge.bin HTTP/1.1\r\nHost: p\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        await writer.drain()
        writer.transport.pause_reading()
        stalled.append(writer)
    try:
        await asyncio.sleep(0.2)
        response = await asyncio.wait_for(
            client.get("/admin/exports/q4.pdf", headers=bearer(token)), timeout=8
        )
        assert response.status == 200
        assert await response.read() == s3.report
    finally:
        for writer in stalled:
            writer.transport.abort()
    reasons = [
        json.loads(r.getMessage()).get("reason") for r in caplog.records if r.name == "proxy.access"
    ]
    assert "client stopped reading (limits.client_write_timeout)" in reasons


async def test_a_full_s3_pool_is_a_fast_503_not_a_504_a_minute_later(proxy, s3: S3Objects) -> None:
    """Issue 11 item 6: slow downloads held the whole S3 pool and everyone else waited
    s3.request_timeout (60 s) for a 504. With the defaults, a request that finds no free
    connection within s3.pool_timeout (2 s) is answered 503 with Retry-After."""
    client = await proxy(config_dict(s3.endpoint, s3={"max_connections": 2}))
    host, port = client.server.host, client.server.port
    token = make_token("root", role="admin")
    stalled = []
    for _ in range(2):  # within its per-client cap, this client takes the whole pool
        reader, writer = await asyncio.open_connection(
            host, port, limit=1024, local_addr=("127.0.0.2", 0)
        )
        writer.write(
            f"GET /admin/exports/huge.bin HTTP/1.1\r\nHost: p\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.transport.pause_reading()
        stalled.append(writer)
    loop = asyncio.get_running_loop()
    try:
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
        async with aiohttp.ClientSession(connector=connector) as other:
            started = loop.time()
            refused = await asyncio.wait_for(
                other.get(client.make_url("/admin/exports/q4.pdf"), headers=bearer(token)),
                timeout=10,
            )
            assert refused.status == 503
            assert loop.time() - started < 5
            assert refused.headers["Retry-After"] == "1"
            assert await refused.json() == {"error": "busy, try again"}
            # what needs no S3 connection is still answered at once
            link = await other.get(
                client.make_url("/admin/links/q4.pdf"), headers=bearer(token), allow_redirects=False
            )
            assert link.status == 302
            for writer in stalled:
                writer.transport.abort()
            stalled.clear()
            served = await asyncio.wait_for(
                other.get(client.make_url("/admin/exports/q4.pdf"), headers=bearer(token)),
                timeout=10,
            )
            assert await served.read() == s3.report  # the pool recovered
    finally:
        for writer in stalled:
            writer.transport.abort()


async def test_without_aws_credentials_each_failure_names_its_operation(
    proxy, s3: S3Objects, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No credentials in the chain (the session's env keys removed; files and instance
    metadata are already off): a warning at start-up, and a 502 whose logged reason names
    what could not be signed: GetObject for a stream, presign for a redirect."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    caplog.set_level(logging.INFO)
    client = await proxy()
    (warning,) = [r for r in caplog.records if r.name == "proxy.storage"]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage().startswith("no AWS credentials found: streaming (GetObject")
    streamed = await client.get("/stream/photos/42", headers=ADMIN)
    redirected = await client.get("/photos/42", headers=ADMIN, allow_redirects=False)
    assert (streamed.status, redirected.status) == (502, 502)
    reasons = [
        json.loads(r.getMessage())["reason"] for r in caplog.records if r.name == "proxy.access"
    ]
    assert reasons == [
        "GetObject: no AWS credentials found in the standard chain",
        "presign: no AWS credentials found in the standard chain",
    ]


async def test_storage_says_whether_it_has_credentials(
    s3: S3Objects, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    settings = build_config(config_dict(s3.endpoint, s3={"engine": engine})).settings.s3
    with_keys = create_engine(settings)
    await with_keys.open()
    await with_keys.close()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    without = create_engine(settings)
    await without.open()
    await without.close()
    assert (with_keys.has_credentials, without.has_credentials) == (True, False)


async def test_a_stalled_s3_is_a_quick_504_and_readyz_says_so(
    proxy, faulty: FaultyS3, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 23: during an S3 freeze nothing failed fast; each request waited read_timeout.
    Past s3.first_byte_timeout without S3's response head, the answer is a 504 (not retried:
    a second wait would only double the first), the log says why, and /readyz reports the
    stall while staying ready (every replica shares S3: failing them all helps nobody)."""
    caplog.set_level(logging.INFO, logger="proxy.access")
    timeouts = {"read_timeout": 30, "request_timeout": 60, "max_attempts": 3}
    data = config_dict(faulty.url, s3={**timeouts, "first_byte_timeout": 0.2}, health={"cache": 0})
    data["admin"] = {"access": {"claims": {"role": "admin"}}}  # who may read what is degraded
    client = await proxy(data)
    ready = await client.get("/readyz")
    assert (ready.status, await ready.json()) == (200, {"status": "ready"})
    faulty.mode = "hang"
    faulty.requests = 0
    for path in ("/admin/exports/q4.pdf", "/auto/q4.pdf"):  # a GET, and an `auto` route's HEAD
        answer = await client.get(path, headers=ADMIN)
        assert (answer.status, await answer.json()) == (504, {"error": "storage timed out"})
    assert faulty.requests == 2  # one each: not retried
    reasons = [
        json.loads(r.getMessage()).get("reason") for r in caplog.records if r.name == "proxy.access"
    ]
    assert reasons == [
        "GetObject: no response head from S3 within s3.first_byte_timeout (0.2 s)",
        "HeadObject: no response head from S3 within s3.first_byte_timeout (0.2 s)",
    ]
    faulty.mode = "ok"
    public = await client.get("/readyz")  # anonymous: the status only (issue 21 item 6)
    assert (public.status, await public.json()) == (200, {"status": "ready"})
    ready = await client.get("/readyz", headers=ADMIN)
    assert ready.status == 200
    assert await ready.json() == {
        "status": "ready",
        "degraded": [
            "s3 stalling: 2 request(s) got no response head within s3.first_byte_timeout in "
            "the last 60 s (answered 504)"
        ],
    }
    answer = await client.get("/admin/exports/q4.pdf", headers=ADMIN)
    assert answer.status == 200  # S3 is back: so is the proxy


async def test_a_shorter_request_timeout_bounds_the_wait_and_says_so(
    proxy, faulty: FaultyS3, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    data = config_dict(faulty.url, s3={"read_timeout": 30, "request_timeout": 0.2})
    client = await proxy(data)
    faulty.mode = "hang"
    answer = await client.get("/admin/exports/q4.pdf", headers=ADMIN)
    assert answer.status == 504
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
    assert line["reason"] == "GetObject: S3 did not answer within s3.request_timeout (0.2 s)"


async def test_the_first_byte_deadline_spans_every_attempt_and_backoff(
    proxy, faulty: FaultyS3, caplog: pytest.LogCaptureFixture
) -> None:
    """s3.first_byte_timeout bounds the attempts together, backoffs included: an S3 that
    answers 500 every time gets a 504 once it has passed, not after max_attempts answers.
    (Ten attempts fit in 0.3 s only if nine random backoffs all come out near zero.)"""
    caplog.set_level(logging.INFO, logger="proxy.access")
    timeouts = {"first_byte_timeout": 0.3, "read_timeout": 5, "request_timeout": 30}
    client = await proxy(config_dict(faulty.url, s3={**timeouts, "max_attempts": 10}))
    faulty.mode = "error"
    answer = await client.get("/admin/exports/q4.pdf", headers=ADMIN)
    assert answer.status == 504
    assert faulty.requests < 10
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
    assert line["reason"] == (
        "GetObject: no response head from S3 within s3.first_byte_timeout (0.3 s)"
    )
