"""Shared fixtures: a real moto S3 server on loopback, seeded objects, configs and tokens."""

from __future__ import annotations

import os

# Test credentials for the whole session, set before botocore reads them; no real AWS
# profile or instance metadata may leak in.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_CONFIG_FILE=os.devnull,
    AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    AWS_EC2_METADATA_DISABLED="true",
)
os.environ.pop("AWS_SESSION_TOKEN", None)
os.environ.pop("AWS_PROFILE", None)

import copy
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import jwt
import pytest
import yaml
from aiohttp.test_utils import BaseTestServer, TestClient
from aiohttp.web import ServerRunner
from moto.server import ThreadedMotoServer

from proxy.app import Gateway
from proxy.config import Config, parse_config
from proxy.server import low_level_server
from proxy.storage import Storage

from .redisd import redis_server  # noqa: F401 - a fixture, for the tests that share state

SECRET = "test-secret-" + "x" * 40
BIG_SIZE = 3 * 1024 * 1024 + 17  # spans many chunks, not a multiple of any chunk size
HUGE_SIZE = 48 * 1024 * 1024


def _pattern(size: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 64  # 2 KiB, deterministic
    return (block * (size // len(block) + 1))[:size]


@dataclass(frozen=True)
class S3Objects:
    endpoint: str
    photo: bytes
    report: bytes
    big: bytes
    notes: bytes
    album: bytes
    odd_name_key: str


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3(moto_endpoint: str) -> S3Objects:
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    for bucket in ("hr-private", "reports", "user-files"):
        client.create_bucket(Bucket=bucket)
    objects = S3Objects(
        endpoint=moto_endpoint,
        photo=_pattern(10 * 1024, 1),
        report=b"%PDF-1.4 quarterly numbers\n",
        big=_pattern(BIG_SIZE, 2),
        notes=b"alice's notes\n",
        album=_pattern(5000, 3),
        odd_name_key='exports/we"ird; name=x é.pdf',
    )
    put = client.put_object
    put(
        Bucket="hr-private",
        Key="employees/42/photo.jpg",
        Body=objects.photo,
        ContentType="image/jpeg",
    )
    put(Bucket="reports", Key="exports/q4.pdf", Body=objects.report, ContentType="application/pdf")
    put(Bucket="reports", Key="exports/big.bin", Body=objects.big)
    # larger than any socket buffer on loopback, for tests of stalled clients
    put(Bucket="reports", Key="exports/huge.bin", Body=_pattern(HUGE_SIZE, 4))
    put(Bucket="reports", Key=objects.odd_name_key, Body=objects.report)
    put(
        Bucket="reports",
        Key="exports/page.html",
        Body=b"<script>alert(1)</script>",
        ContentType="text/html",
    )
    put(
        Bucket="user-files",
        Key="users/alice/notes.txt",
        Body=objects.notes,
        ContentType="text/plain",
    )
    put(
        Bucket="user-files",
        Key="users/alice/albums/trip/1.jpg",
        Body=objects.album,
        ContentType="image/jpeg",
    )
    return objects


BASE_CONFIG: dict[str, Any] = {
    "listen": {"host": "127.0.0.1", "port": 0},
    "s3": {
        "region": "us-east-1",
        "addressing_style": "path",
        "connect_timeout": 2,
        "read_timeout": 5,
        "max_attempts": 1,
    },
    "auth": {"algorithms": ["HS256"], "secret": SECRET},
    "routes": [
        {
            "name": "employee-photos",
            "match": "/photos/{employee_id}",
            "bucket": "hr-private",
            "key": "employees/{employee_id}/photo.jpg",
            "delivery": "redirect",
            "access": "authenticated",
            "ttl": 300,
            "cache_control": "private, max-age=300",
        },
        {
            "name": "photo-stream",
            "match": "/stream/photos/{employee_id}",
            "bucket": "hr-private",
            "key": "employees/{employee_id}/photo.jpg",
            "delivery": "stream",
            "access": "authenticated",
        },
        {
            "name": "admin-exports",
            "match": "/admin/exports/{path:.+}",
            "bucket": "reports",
            "key": "exports/{path}",
            "delivery": "stream",
            "access": {"claims": {"role": "admin"}},
            "disposition": "attachment",
        },
        {
            "name": "admin-links",
            "match": "/admin/links/{path:.+}",
            "bucket": "reports",
            "key": "exports/{path}",
            "delivery": "redirect",
            "access": {"claims": {"role": "admin"}},
            "disposition": "attachment",
            "ttl": 60,
        },
        {
            "name": "my-files",
            "match": "/me/{path:.+}",
            "bucket": "user-files",
            "key": "users/{claims.sub}/{path}",
            "delivery": "stream",
            "access": "authenticated",
        },
        {
            "name": "user-albums",
            "match": "/users/{user}/albums/{path:.+}",
            "bucket": "user-files",
            "key": "users/{user}/albums/{path}",
            "delivery": "stream",
            "access": {"claims": {"sub": "{user}"}},
        },
        {
            "name": "stable-photos",
            "match": "/stable/photos/{employee_id}",
            "bucket": "hr-private",
            "key": "employees/{employee_id}/photo.jpg",
            "delivery": "redirect",
            "access": "authenticated",
            "ttl": 300,
            "stable": 3600,
            "cache_control": "private, max-age=3600",
        },
        {
            "name": "auto-exports",
            "match": "/auto/{path:.+}",
            "bucket": "reports",
            "key": "exports/{path}",
            "delivery": "auto",
            "access": "authenticated",
            "disposition": "attachment",
        },
        {
            "name": "public-photos",
            "match": "/public/{employee_id}",
            "bucket": "hr-private",
            "key": "employees/{employee_id}/photo.jpg",
            "delivery": "stream",
            "access": "public",
        },
    ],
}


def config_dict(endpoint: str | None = None, **sections: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE_CONFIG)
    if endpoint is not None:
        data["s3"]["endpoint_url"] = endpoint
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name].update(value)
        else:
            data[name] = value
    return data


def build_config(data: dict[str, Any]) -> Config:
    return parse_config(yaml.safe_dump(data), env={})


def make_token(
    sub: str = "alice",
    ttl: int = 3600,
    now: float | None = None,
    key: str = SECRET,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    issued = int(time.time() if now is None else now)
    payload = {"sub": sub, "iat": issued, "exp": issued + ttl, **claims}
    return jwt.encode(payload, key, algorithm=algorithm)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Clock:
    """An injectable clock; tests move time by assignment, never by sleeping."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


ProxyFactory = Callable[..., Any]


class ProductionLikeServer(BaseTestServer):  # type: ignore[type-arg]
    """Runs the gateway exactly as `serve` does (the same low-level aiohttp server), on a
    loopback port; the gateway is opened with the server and closed after it."""

    def __init__(self, gateway: Gateway, config: Config) -> None:
        super().__init__(host="127.0.0.1")
        self.gateway = gateway
        self._config = config

    async def _make_runner(self, **kwargs: Any) -> ServerRunner:
        await self.gateway.open()
        return ServerRunner(low_level_server(self.gateway, self._config), **kwargs)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.gateway.close()


ENGINES = ("builtin", "aiobotocore")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_engines: run each test that uses the `engine` fixture (`proxy` does) once per "
        "S3 engine, builtin and aiobotocore",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_engines"):
        metafunc.parametrize("engine", ENGINES, indirect=True)


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The s3.engine a test's proxy runs: both, one after the other, in modules marked
    `both_engines`; else the default."""
    return str(getattr(request, "param", "builtin"))


@pytest.fixture
def proxy(aiohttp_client: Any, s3: S3Objects, engine: str) -> ProxyFactory:
    """Start the proxy on a real loopback socket against moto; returns a TestClient. Its
    s3.engine is the `engine` fixture's unless the config names one."""

    async def start(
        data: dict[str, Any] | None = None,
        storage: Storage | None = None,
        clock: Callable[[], float] = time.time,
    ) -> TestClient[Any, Any]:
        data = copy.deepcopy(data or config_dict(s3.endpoint))
        data.setdefault("s3", {}).setdefault("engine", engine)
        config = build_config(data)
        server = ProductionLikeServer(Gateway(config, storage=storage, clock=clock), config)
        client: TestClient[Any, Any] = await aiohttp_client(server)
        return client

    return start


async def raw_request(
    client: TestClient[Any, Any],
    target: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, dict[str, str], bytes]:
    """Send `target` byte for byte (no client-side normalization of `..` or escapes)."""
    import asyncio

    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    lines = [f"{method} {target} HTTP/1.1", "Host: proxy", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), parsed, body
