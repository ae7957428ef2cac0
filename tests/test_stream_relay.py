"""A long streamed body goes from the S3 socket to the client's by itself (upstream.py rule 5,
delivery/stream.py `_relay_rest`): exact bytes for slow readers, on asyncio's loop (in
process) and on uvloop (the product's, `python -m proxy serve`), the connection kept alive
after it, and what was sent logged as sent. The object is random bytes: a relay buffer
reused while the client's transport still held it would show as corrupted bytes (a periodic
pattern could hide it)."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import random
import socket
import time
from pathlib import Path

import boto3
import pytest

from .conftest import S3Objects, bearer, config_dict, make_token
from .test_process import serving

pytestmark = pytest.mark.both_engines

TOKEN = make_token("root", role="admin")
ADMIN = bearer(TOKEN)
# More than the kernel buffers between the proxy and a client (tcp_wmem max is 4 MiB).
NOISE = random.Random(26).randbytes(12 * 1024 * 1024 + 5)
PATH = "/admin/exports/noise.bin"


@pytest.fixture(scope="module")
def noise(s3: S3Objects) -> bytes:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    client.put_object(Bucket="reports", Key="exports/noise.bin", Body=NOISE)
    return NOISE


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: str = ""
) -> tuple[int, bytes]:
    """One GET on a kept-alive connection, its body read in small pieces."""
    writer.write(
        f"GET {PATH} HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {TOKEN}\r\n{headers}\r\n".encode()
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    length = next(
        int(line.split(":")[1]) for line in head if line.lower().startswith("content-length:")
    )
    body = bytearray()
    while len(body) < length:
        body += await reader.read(min(16 * 1024, length - len(body)))
        await asyncio.sleep(0)  # a slow reader: the proxy's writes back up
    return status, bytes(body)


async def test_a_slow_reader_gets_exact_bytes_twice_on_one_connection(
    proxy, noise: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    client = await proxy()
    reader, writer = await asyncio.open_connection(
        client.server.host, client.server.port, limit=16 * 1024
    )
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    try:
        assert await _get(reader, writer) == (200, noise)
        # the same connection: the relay handed it back to aiohttp in order
        assert await _get(reader, writer, "Range: bytes=1000-\r\n") == (206, noise[1000:])
    finally:
        writer.close()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
    assert [(line["status"], line["bytes"], line.get("reason")) for line in lines] == [
        (200, len(noise), None),
        (206, len(noise) - 1000, None),
    ]
    assert client.server.gateway.streams.in_use == 0


def test_on_uvloop_a_slow_reader_gets_exact_bytes(
    noise: bytes, s3: S3Objects, tmp_path: Path
) -> None:
    with serving(config_dict(s3.endpoint), tmp_path) as (_process, port):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.connect()
        assert connection.sock is not None
        connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        try:
            for _ in range(2):
                connection.request("GET", PATH, headers={"Authorization": f"Bearer {TOKEN}"})
                response = connection.getresponse()
                assert response.status == 200
                body = bytearray(response.read(256 * 1024))
                # Stop reading a while: the proxy's socket to us fills, its transport holds
                # the relay buffer's bytes, and S3 goes on sending meanwhile.
                time.sleep(0.3)
                while piece := response.read(16 * 1024):
                    body += piece
                assert body == noise
        finally:
            connection.close()
