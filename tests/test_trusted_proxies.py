"""Clients behind load balancers, over real sockets: `listen.trusted_proxies` (X-Forwarded-For,
Forwarded, X-Forwarded-Proto) and `listen.proxy_protocol` (v1 and v2). Any 127.x.y.z is
loopback on Linux, so one test plays an ingress (127.0.0.9) and several direct clients.

The attacks: a direct client naming itself in X-Forwarded-For to escape its rate limit or to
write someone else's address into the log; a PROXY header from outside the trusted networks;
a trusted balancer whose connection lacks the header it must send."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.edge import via_trusted_proxy

from .balancer import Balancer
from .conftest import Clock, S3Objects, bearer, config_dict, make_token
from .test_limits import _SlowStorage
from .test_proxyheader import v2, v2_inet, v2_inet6

INGRESS = "127.0.0.9"
T0 = 1_700_000_000.0


@asynccontextmanager
async def _from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def _whoami(request: web.BaseRequest) -> web.Response:
    """A page that says what the edge made of a request."""
    return web.json_response(
        {
            "remote": request.remote,
            "scheme": request.scheme,
            "secure": request.secure,
            "trusted": via_trusted_proxy(request),
        }
    )


async def _proxy(proxy: Any, s3: S3Objects, clock: Clock | None = None, **sections: Any) -> Any:
    listen = {"trusted_proxies": [f"{INGRESS}/32", "10.0.0.0/8"], **sections.pop("listen", {})}
    data = config_dict(s3.endpoint, listen=listen, **sections)
    client = await proxy(data, clock=clock or Clock(T0))
    client.server.gateway.add_pages({"/whoami": _whoami})
    return client


def _access(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]


async def test_an_ingress_names_the_client_and_its_scheme(proxy, s3: S3Objects) -> None:
    client = await _proxy(proxy, s3)
    url = str(client.make_url("/whoami"))
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7, 10.1.1.1", "X-Forwarded-Proto": "https"}
    async with _from(INGRESS) as ingress, ingress.get(url, headers=headers) as answer:
        seen = await answer.json()
    assert seen == {"remote": "203.0.113.7", "scheme": "https", "secure": True, "trusted": True}


async def test_a_direct_client_cannot_name_itself(proxy, s3: S3Objects) -> None:
    client = await _proxy(proxy, s3)
    url = str(client.make_url("/whoami"))
    headers = {
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "https",
        "Forwarded": "for=203.0.113.8;proto=https",
        "X-Real-IP": "203.0.113.9",
    }
    async with _from("127.0.0.2") as direct, direct.get(url, headers=headers) as answer:
        seen = await answer.json()
    assert seen == {"remote": "127.0.0.2", "scheme": "http", "secure": False, "trusted": False}


async def test_without_trusted_proxies_the_headers_mean_nothing(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint))
    client.server.gateway.add_pages({"/whoami": _whoami})
    async with _from(INGRESS) as ingress:
        url = str(client.make_url("/whoami"))
        async with ingress.get(url, headers={"X-Forwarded-For": "203.0.113.7"}) as answer:
            assert (await answer.json())["remote"] == INGRESS


async def test_rate_limits_count_each_client_behind_the_ingress(
    proxy, s3: S3Objects, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 23: behind an ingress every user was one client, so one user's burst
    rate-limited everyone. A direct client's forged header changes nothing."""
    caplog.set_level(logging.INFO, logger="proxy.access")
    limits = {"rate_limit": {"per_client": {"rate": 0.001, "burst": 1}}}
    client = await _proxy(proxy, s3, limits=limits)
    url = str(client.make_url("/public/42"))

    def forwarded(address: str) -> dict[str, str]:
        return {"X-Forwarded-For": address}

    async with _from(INGRESS) as ingress, _from("127.0.0.2") as direct:
        statuses = []
        for address in ("203.0.113.1", "203.0.113.2", "203.0.113.1"):
            async with ingress.get(url, headers=forwarded(address)) as answer:
                await answer.read()
                statuses.append(answer.status)
        assert statuses == [200, 200, 429]  # each user has a bucket; the first spent his
        for address in ("198.51.100.1", "198.51.100.2"):  # forged: ignored
            async with direct.get(url, headers=forwarded(address)) as answer:
                await answer.read()
                statuses.append(answer.status)
        assert statuses[3:] == [200, 429]
    logged = [(line["client"], line["status"]) for line in _access(caplog)]
    assert logged == [
        ("203.0.113.1", 200),
        ("203.0.113.2", 200),
        ("203.0.113.1", 429),
        ("127.0.0.2", 200),
        ("127.0.0.2", 429),
    ]


async def test_stream_caps_count_each_client_behind_the_ingress(proxy, s3: S3Objects) -> None:
    storage = _SlowStorage()
    limits = {"max_streams_per_client": 1}
    data = config_dict(limits=limits, listen={"trusted_proxies": [f"{INGRESS}/32"]})
    client = await proxy(data, storage=storage)
    url = str(client.make_url("/public/42"))
    async with _from(INGRESS) as ingress:
        alice = await ingress.get(url, headers={"X-Forwarded-For": "203.0.113.1"})
        bob = await ingress.get(url, headers={"X-Forwarded-For": "203.0.113.2"})
        again = await ingress.get(url, headers={"X-Forwarded-For": "203.0.113.1"})
        assert (alice.status, bob.status, again.status) == (200, 200, 429)
        storage.release.set()
        for answer in (alice, bob):
            assert len(await answer.read()) == 4096


async def test_the_ingress_connections_are_not_capped_as_one_client(proxy, s3: S3Objects) -> None:
    """The per-client connection cap counts sockets: an ingress holds many users' connections,
    so its own are not counted (its users still meet the rate limits and stream caps)."""
    client = await _proxy(proxy, s3, limits={"max_connections_per_client": 2})
    host, port = client.server.host, client.server.port
    held = [await asyncio.open_connection(host, port, local_addr=(INGRESS, 0)) for _ in range(4)]
    for reader, writer in held:
        writer.write(b"GET /public/42 HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
        writer.close()
    direct = [
        await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0)) for _ in range(3)
    ]
    async with asyncio.timeout(5):
        assert await direct[2][0].read() == b""  # the third is closed at once
    for _, writer in direct:
        writer.close()


async def test_rfc_7239_forwarded_when_configured(proxy, s3: S3Objects) -> None:
    client = await _proxy(proxy, s3, listen={"forwarded_header": "Forwarded"})
    url = str(client.make_url("/whoami"))
    headers = {
        "Forwarded": 'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https',
        "X-Forwarded-For": "203.0.113.99",  # not the configured header: ignored
    }
    async with _from(INGRESS) as ingress, ingress.get(url, headers=headers) as answer:
        seen = await answer.json()
    assert (seen["remote"], seen["scheme"], seen["trusted"]) == ("2001:db8::7", "https", True)


async def test_an_unclosed_quote_cannot_swallow_the_element_the_ingress_appended(
    proxy, s3: S3Objects, caplog: pytest.LogCaptureFixture
) -> None:
    """An ingress that appends its element to the client's own Forwarded line (nginx's
    `"$http_forwarded, for=$remote_addr"`): a client whose element leaves a quoted string
    open made the ingress's `, for=<its address>` part of its own quoted value, so its own
    `for=` was read as the client, a new one each request, and no rate limit held."""
    caplog.set_level(logging.INFO, logger="proxy.access")
    limits = {"rate_limit": {"per_client": {"rate": 0.001, "burst": 1}}}
    client = await _proxy(proxy, s3, listen={"forwarded_header": "Forwarded"}, limits=limits)
    url = str(client.make_url("/public/42"))
    statuses = []
    async with _from(INGRESS) as ingress:
        for forged, appended in (
            ('for=198.51.100.1;x="', "for=203.0.113.1"),
            ('for=198.51.100.2;x="\\', 'for="[2001:db8::1]:4711"'),
            ('for=198.51.100.3;x="', "for=203.0.113.1"),
        ):
            headers = {"Forwarded": f"{forged}, {appended}"}
            async with ingress.get(url, headers=headers) as answer:
                await answer.read()
                statuses.append(answer.status)
    logged = [line["client"] for line in _access(caplog)]
    assert logged == ["203.0.113.1", "2001:db8::1", "203.0.113.1"]
    assert statuses == [200, 200, 429]


# PROXY protocol: raw sockets, as an L4 load balancer connects.


async def _raw(client: Any, preface: bytes, source: str = INGRESS, path: str = "/whoami") -> bytes:
    """Connect from `source`, send `preface` then one request; everything the proxy sends
    back until it closes."""
    reader, writer = await asyncio.open_connection(
        client.server.host, client.server.port, local_addr=(source, 0)
    )
    try:
        writer.write(
            preface + f"GET {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


def _seen(raw: bytes) -> dict[str, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), raw[:200]
    seen: dict[str, Any] = json.loads(body)
    return seen


async def _balanced(proxy: Any, s3: S3Objects, **sections: Any) -> Any:
    return await _proxy(proxy, s3, listen={"proxy_protocol": True}, **sections)


@pytest.mark.parametrize(
    ("preface", "client_address"),
    [
        (b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n", "203.0.113.7"),
        (b"PROXY TCP6 2001:db8::7 ::1 51234 80\r\n", "2001:db8::7"),
        (v2_inet("203.0.113.7"), "203.0.113.7"),
        (v2_inet6("2001:db8::7"), "2001:db8::7"),
        (b"PROXY UNKNOWN\r\n", INGRESS),  # the balancer's own health check
        (v2(0, 0x00, b""), INGRESS),  # LOCAL, likewise
    ],
)
async def test_proxy_protocol_names_the_client(
    proxy, s3: S3Objects, preface: bytes, client_address: str
) -> None:
    client = await _balanced(proxy, s3)
    seen = _seen(await _raw(client, preface))
    assert seen["remote"] == client_address
    # The declared client is not a trusted proxy: its own forwarding headers would be ignored.
    assert seen["trusted"] is (client_address == INGRESS)


async def test_proxy_protocol_in_pieces(proxy, s3: S3Objects) -> None:
    client = await _balanced(proxy, s3)
    reader, writer = await asyncio.open_connection(
        client.server.host, client.server.port, local_addr=(INGRESS, 0)
    )
    try:
        for piece in (
            b"PRO",
            b"XY TCP4 203.0.113.7 ",
            b"127.0.0.1 1 80\r\nGET /who",
            b"ami HTTP/1.1\r\n",
        ):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)  # separate segments, not a timing assertion
        writer.write(b"Host: p\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            assert _seen(await reader.read())["remote"] == "203.0.113.7"
    finally:
        writer.close()


async def test_a_balancer_connection_without_the_header_is_closed(
    proxy, s3: S3Objects, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="proxy.edge")
    client = await _balanced(proxy, s3)
    assert await _raw(client, b"") == b""  # nothing asked of a stranger is answered
    assert "no PROXY protocol header" in caplog.text
    assert await _raw(client, b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n") == b""
    assert await _raw(client, b"PROXY TCP4 " + b"9" * 200) == b""


async def test_a_proxy_header_from_outside_the_trusted_networks_is_refused(
    proxy, s3: S3Objects, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="proxy.edge")
    client = await _balanced(proxy, s3)
    forged = b"PROXY TCP4 10.0.0.1 127.0.0.1 51234 80\r\n"  # would even claim to be trusted
    assert await _raw(client, forged, source="127.0.0.2") == b""
    assert await _raw(client, v2_inet("10.0.0.1"), source="127.0.0.2") == b""
    assert "outside listen.trusted_proxies" in caplog.text
    # Without a header, a direct client is served as itself (probes, internal callers).
    assert _seen(await _raw(client, b"", source="127.0.0.2"))["remote"] == "127.0.0.2"
    # A method starting like the header is still a method.
    raw = await _raw(client, b"", source="127.0.0.2", path="/public/42")
    assert raw.startswith(b"HTTP/1.1 200 ")


async def test_the_declared_client_meets_its_limits(proxy, s3: S3Objects) -> None:
    client = await _balanced(
        proxy,
        s3,
        limits={
            "max_connections_per_client": 1,
            "rate_limit": {"per_client": {"rate": 0.001, "burst": 1}},
        },
    )

    def preface(address: str) -> bytes:
        return f"PROXY TCP4 {address} 127.0.0.1 51234 80\r\n".encode()

    assert (await _raw(client, preface("203.0.113.1"), path="/public/42")).startswith(
        b"HTTP/1.1 200 "
    )
    assert (await _raw(client, preface("203.0.113.1"), path="/public/42")).startswith(
        b"HTTP/1.1 429 "
    )
    assert (await _raw(client, preface("203.0.113.2"), path="/public/42")).startswith(
        b"HTTP/1.1 200 "
    )
    # One connection per declared client: a second one from the same client is closed.
    host, port = client.server.host, client.server.port
    first = await asyncio.open_connection(host, port, local_addr=(INGRESS, 0))
    first[1].write(preface("203.0.113.3"))
    await first[1].drain()
    second = await _raw(client, preface("203.0.113.3"))
    assert second == b""
    first[1].close()


async def test_a_chain_through_the_balancer_reads_forwarded_for(proxy, s3: S3Objects) -> None:
    """CDN (trusted, 10.0.0.0/8) -> L4 balancer (PROXY) -> proxy: the PROXY header names the
    CDN, which is trusted, so its X-Forwarded-For names the client."""
    client = await _balanced(proxy, s3)
    reader, writer = await asyncio.open_connection(
        client.server.host, client.server.port, local_addr=(INGRESS, 0)
    )
    try:
        writer.write(
            b"PROXY TCP4 10.2.3.4 127.0.0.1 51234 80\r\n"
            b"GET /whoami HTTP/1.1\r\nHost: p\r\nX-Forwarded-For: 203.0.113.5\r\n"
            b"X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
        )
        async with asyncio.timeout(5):
            seen = _seen(await reader.read())
    finally:
        writer.close()
    assert seen == {"remote": "203.0.113.5", "scheme": "https", "secure": True, "trusted": True}


async def test_a_token_route_works_behind_the_balancer(proxy, s3: S3Objects) -> None:
    client = await _balanced(proxy, s3)
    token = make_token("root", role="admin", now=T0)
    reader, writer = await asyncio.open_connection(
        client.server.host, client.server.port, local_addr=(INGRESS, 0)
    )
    try:
        writer.write(
            v2_inet("203.0.113.7")
            + b"GET /admin/exports/q4.pdf HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
            + f"Authorization: {bearer(token)['Authorization']}\r\n\r\n".encode()
        )
        async with asyncio.timeout(5):
            raw = await reader.read()
    finally:
        writer.close()
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(s3.report)


@pytest.mark.parametrize("mode", ["xff", "proxy-v1", "proxy-v2"])
async def test_behind_the_test_balancer_each_client_is_itself(
    proxy, s3: S3Objects, mode: str
) -> None:
    """tests/balancer.py, as the fleet soak uses it: through an L7 balancer (X-Forwarded-For)
    or an L4 one (PROXY protocol), each client keeps its own address."""
    listen = {"trusted_proxies": ["127.0.0.1/32"], "proxy_protocol": mode != "xff"}
    client = await proxy(config_dict(s3.endpoint, listen=listen))
    client.server.gateway.add_pages({"/whoami": _whoami})
    balancer = Balancer([(client.server.host, client.server.port)], mode=mode)
    port = await balancer.start()
    try:
        for address in ("127.0.0.2", "127.0.0.3"):
            async with (
                _from(address) as session,
                session.get(f"http://127.0.0.1:{port}/whoami") as answer,
            ):
                assert (await answer.json())["remote"] == address
    finally:
        await balancer.close()
    assert balancer.connections == 2
