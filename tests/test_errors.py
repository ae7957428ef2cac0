"""Every refusal over real HTTP: statuses, bodies without internals, S3 faults on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.errors import UpstreamError

from .conftest import S3Objects, bearer, config_dict, make_token, raw_request
from .fakes import FakeStorage

ALICE = bearer(make_token("alice"))
ADMIN = bearer(make_token("root", role="admin"))


async def _error_body(response: aiohttp.ClientResponse) -> str:
    assert response.headers["Content-Type"].startswith("application/json")
    body = await response.json()
    assert set(body) == {"error"}
    text: str = body["error"]
    return text


async def test_missing_object_is_404(proxy) -> None:
    client = await proxy()
    response = await client.get("/stream/photos/999", headers=ALICE)
    assert response.status == 404
    assert await _error_body(response) == "not found"


async def test_no_route_is_404(proxy) -> None:
    client = await proxy()
    response = await client.get("/nowhere/at/all", headers=ALICE)
    assert response.status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_wrong_method_is_405_with_allow(proxy, method: str) -> None:
    client = await proxy()
    response = await client.request(method, "/stream/photos/42", headers=ALICE)
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "path",
    [
        "/admin/exports/../../hr/secret",
        "/admin/exports/%2e%2e/%2E%2E/hr/secret",
        "/admin/exports/a/./b",
        "/admin/exports/a%5Cb",
        "/admin/exports/a\\b",
        "/admin/exports/a%00b",
        "/admin/exports/a%01b",
        "/admin/exports/a//b",
        "/admin/exports/%c0%ae%c0%ae/x",
        "/stream/photos/4%2F2",
        "/users/alice%2F..%2Fbob/albums/x.jpg",
    ],
)
async def test_unsafe_path_params_are_400_without_touching_s3(proxy, path: str) -> None:
    fake = FakeStorage()
    client = await proxy(config_dict(), storage=fake)
    token = ADMIN if path.startswith("/admin") else ALICE
    status, _, _ = await raw_request(client, path, token)
    assert status == 400
    assert fake.calls == []


async def test_missing_bucket_is_502(proxy, s3: S3Objects) -> None:
    data = config_dict(s3.endpoint)
    data["routes"][1]["bucket"] = "no-such-bucket"
    client = await proxy(data)
    response = await client.get("/stream/photos/42", headers=ALICE)
    assert response.status == 502
    assert await _error_body(response) == "storage unavailable"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_s3_refusing_connections_is_502(proxy) -> None:
    client = await proxy(config_dict(f"http://127.0.0.1:{_closed_port()}"))
    response = await client.get("/stream/photos/42", headers=ALICE)
    assert response.status == 502
    body = await response.text()
    assert "127.0.0.1" not in body and "Traceback" not in body


@pytest.fixture
async def silent_s3() -> AsyncIterator[str]:
    """Accepts connections and never answers: the read timeout must fire."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_s3_not_answering_is_504(proxy, silent_s3: str) -> None:
    client = await proxy(config_dict(silent_s3, s3={"read_timeout": 0.3}))
    response = await client.get("/stream/photos/42", headers=ALICE)
    assert response.status == 504
    assert await _error_body(response) == "storage timed out"


@pytest.fixture
async def failing_s3() -> AsyncIterator[str]:
    async def fail(request: web.Request) -> web.Response:
        xml = "<Error><Code>SlowDown</Code><Message>secret internal detail</Message></Error>"
        return web.Response(status=503, text=xml, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_s3_answering_503_is_502_without_its_words(proxy, failing_s3: str) -> None:
    client = await proxy(config_dict(failing_s3))
    response = await client.get("/stream/photos/42", headers=ALICE)
    assert response.status == 502
    body = await response.text()
    assert "SlowDown" not in body and "secret internal detail" not in body


async def test_unexpected_exception_is_a_plain_500(proxy) -> None:
    fake = FakeStorage(fail_with=RuntimeError("secret internal detail"))
    client = await proxy(config_dict(), storage=fake)
    response = await client.get("/stream/photos/42", headers=ALICE)
    assert response.status == 500
    assert await _error_body(response) == "internal error"


async def test_failure_mid_stream_aborts_instead_of_a_short_body(proxy) -> None:
    fake = FakeStorage(
        objects={("hr-private", "employees/42/photo.jpg"): b"x" * 100_000},
        fail_with=UpstreamError("S3 connection reset"),
        fail_after_bytes=10_000,
    )
    client = await proxy(config_dict(), storage=fake)
    response = await client.get("/stream/photos/42", headers=ALICE)
    assert response.status == 200
    assert response.headers["Content-Length"] == "100000"
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    assert fake.closed_streams == 1


async def test_unauthorized_caller_learns_nothing_about_existence(proxy) -> None:
    client = await proxy()
    employee = bearer(make_token("bob", role="employee"))
    exists = await client.get("/admin/exports/q4.pdf", headers=employee)
    missing = await client.get("/admin/exports/nope.pdf", headers=employee)
    assert (exists.status, missing.status) == (403, 403)
    assert await exists.read() == await missing.read()
    anonymous = [await client.get(p) for p in ("/admin/exports/q4.pdf", "/admin/exports/nope.pdf")]
    assert [r.status for r in anonymous] == [401, 401]
