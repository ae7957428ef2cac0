"""upstream.py rule 5: the rest of a long Content-Length body relayed from the S3 socket into
a client's transport (a real TCP connection to a local reader), on asyncio's default loop and
on uvloop. The body is random bytes, so a buffer reused while the client's transport still
held it would show as corrupted bytes."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from proxy.upstream import (
    RELAY_CLIENT_GONE,
    RELAY_DONE,
    RELAY_DRAIN,
    Relay,
    Response,
    SpliceRelay,
    UpstreamClosed,
)

from .test_upstream import (
    CLOSE,
    LIMIT,
    LOOPS,
    SOCKET_READ,
    WINDOW,
    Step,
    answer,
    fetch,
    read_all,
    response_head,
    run_on,
    scenario,
    tls_server_context,
)

BODY = random.Random(5).randbytes(4 * 1024 * 1024)


def on_both_loops_and_relays(
    test: Callable[[bool], Coroutine[Any, Any, None]],
) -> Callable[[str, bool], None]:
    """On each loop, with the splice relay and with the buffer relay (which TLS gets)."""

    @pytest.mark.parametrize("splice", [True, False], ids=["splice", "buffer"])
    @pytest.mark.parametrize("loop", sorted(LOOPS))
    def run(loop: str, splice: bool) -> None:
        run_on(loop, test(splice))

    return run


def is_kind(relay: Relay | None, splice: bool) -> bool:
    """The relay the test meant: a test of one kind must not pass on the other."""
    return type(relay) is (SpliceRelay if splice else Relay)


def long_reply(body: bytes = BODY) -> list[Step]:
    return [response_head("200 OK", f"Content-Length: {len(body)}"), body]


class Client:
    """The far end of the sink: reads what the relay writes, unless told to stop reading."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.reading = asyncio.Event()
        self.reading.set()
        self.got = asyncio.Event()
        self.closed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A small receive buffer: what the kernel absorbs stays far below the bodies sent.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LIMIT)
        try:
            while True:
                await self.reading.wait()
                data = await reader.read(64 * 1024)
                if not data:
                    return
                self.received += data
                self.got.set()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.closed.set()


@asynccontextmanager
async def sink_to(client: Client) -> AsyncIterator[asyncio.StreamWriter]:
    """A transport to `client`, as the proxy holds its client's transport."""
    server = await asyncio.start_server(client.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LIMIT)
    try:
        yield writer
    finally:
        writer.transport.abort()
        server.close()
        await server.wait_closed()


async def relay_all(relay: Relay, writer: asyncio.StreamWriter) -> list[int]:
    """What the stream's task does: drain the sink whenever the relay stops for it."""
    states = []
    try:
        while (state := await relay.next()) != RELAY_DONE:
            states.append(state)
            if state == RELAY_CLIENT_GONE:
                break
            assert state == RELAY_DRAIN
            # Rule 3: the sink holds what was read before the relay began, or one buffer
            assert writer.transport.get_write_buffer_size() <= LIMIT + SOCKET_READ
            try:
                await writer.drain()
            except ConnectionError:
                states.append(RELAY_CLIENT_GONE)
                break
            relay.resume()
    finally:
        relay.close()
    return states


async def first_piece(response: Response) -> bytes:
    piece = await response.read()
    assert piece
    return piece


@on_both_loops_and_relays
async def test_the_rest_of_a_long_body_is_relayed_and_its_connection_reused(splice: bool) -> None:
    client = Client()
    async with (
        scenario(long_reply(), [answer(b"next")], splice=splice) as (server, pool),
        sink_to(client) as w,
    ):
        response = await fetch(pool, server.origin)
        first = await first_piece(response)
        low_high = w.transport.get_write_buffer_limits()
        relay = response.relay(w.transport)
        assert is_kind(relay, splice)
        await relay_all(relay, w)
        assert w.transport.get_write_buffer_limits() == low_high  # as the sink had them
        assert len(first) + relay.relayed == len(BODY)
        assert await response.read() == b""  # the body ended: read() says so, and releases
        while len(client.received) < relay.relayed:
            client.got.clear()
            await client.got.wait()
        assert first + client.received == BODY
        assert await read_all(await fetch(pool, server.origin)) == b"next"
    assert server.accepted == 1  # rule 1: read to the end, so reused


@on_both_loops_and_relays
async def test_rule_3_a_client_that_stops_reading_stops_the_s3_socket(splice: bool) -> None:
    client = Client()
    async with scenario(long_reply(), splice=splice) as (server, pool), sink_to(client) as writer:
        response = await fetch(pool, server.origin)
        first = await first_piece(response)
        client.reading.clear()
        relay = response.relay(writer.transport)
        assert is_kind(relay, splice)
        assert await relay.next() == RELAY_DRAIN
        await asyncio.sleep(WINDOW)  # room for a relay without back-pressure to take it all
        assert server.transports[0].get_write_buffer_size() > 0  # S3 is held back
        assert relay.relayed < len(BODY) // 2
        assert writer.transport.get_write_buffer_size() <= LIMIT
        client.reading.set()
        await writer.drain()
        relay.resume()
        states = await relay_all(relay, writer)
        assert RELAY_CLIENT_GONE not in states
        while len(client.received) < relay.relayed:
            client.got.clear()
            await client.got.wait()
        assert first + client.received == BODY
        response.release()


@on_both_loops_and_relays
async def test_s3_ending_short_mid_relay_raises_and_its_connection_is_dropped(splice: bool) -> None:
    client = Client()
    cut: list[Step] = [response_head("200 OK", f"Content-Length: {len(BODY)}"), BODY[: 1 << 20]]
    cut.append(CLOSE)
    async with (
        scenario(cut, [answer(b"next")], splice=splice) as (server, pool),
        sink_to(client) as writer,
    ):
        response = await fetch(pool, server.origin)
        await first_piece(response)
        relay = response.relay(writer.transport)
        assert is_kind(relay, splice)
        with pytest.raises(UpstreamClosed):
            await relay_all(relay, writer)
        relay.close()
        response.release()
        assert await read_all(await fetch(pool, server.origin)) == b"next"
    assert server.connections_of_requests() == [1, 2]


@on_both_loops_and_relays
async def test_a_client_gone_mid_relay_stops_it_and_the_connection_is_closed(splice: bool) -> None:
    client = Client()
    async with (
        scenario(long_reply(), [answer(b"next")], splice=splice) as (server, pool),
        sink_to(client) as w,
    ):
        response = await fetch(pool, server.origin)
        await first_piece(response)
        relay = response.relay(w.transport)
        assert is_kind(relay, splice)
        await client.got.wait()
        w.transport.abort()  # as the proxy cuts a revoked or stalled client
        states = await relay_all(relay, w)
        assert states[-1] == RELAY_CLIENT_GONE
        assert relay.relayed < len(BODY)
        response.release()
        assert await read_all(await fetch(pool, server.origin)) == b"next"
    assert server.connections_of_requests() == [1, 2]  # rule 1: not read to the end


@on_both_loops_and_relays
async def test_s3_going_quiet_mid_relay_is_a_read_timeout(splice: bool) -> None:
    # S3 sends a part of the body, then waits for a next request that never comes.
    quiet: list[Step] = [response_head("200 OK", f"Content-Length: {len(BODY)}"), BODY[: 1 << 20]]
    client = Client()
    async with (
        scenario(quiet, read_timeout=0.3, splice=splice) as (server, pool),
        sink_to(client) as writer,
    ):
        response = await fetch(pool, server.origin)
        await first_piece(response)
        relay = response.relay(writer.transport)
        assert is_kind(relay, splice)
        with pytest.raises(TimeoutError):
            await relay_all(relay, writer)
        response.release()
        await server.until(lambda: server.ended == 1)  # the quiet connection was closed


@on_both_loops_and_relays
async def test_short_chunked_or_finished_bodies_are_not_relayed(splice: bool) -> None:
    short = [answer(b"s" * (LIMIT // 2))]
    chunked = [response_head("200 OK", "Transfer-Encoding: chunked") + b"3\r\nabc\r\n0\r\n\r\n"]
    client = Client()
    async with scenario(short, chunked, splice=splice) as (server, pool), sink_to(client) as writer:
        for expected in (b"s" * (LIMIT // 2), b"abc"):
            response = await fetch(pool, server.origin)
            assert response.relay(writer.transport) is None
            assert await read_all(response) == expected
            assert response.relay(writer.transport) is None  # released: nothing left


@on_both_loops_and_relays
async def test_after_a_relay_rule_3_still_holds_on_the_reused_connection(splice: bool) -> None:
    client = Client()
    async with (
        scenario(long_reply(), long_reply(), splice=splice) as (server, pool),
        sink_to(client) as writer,
    ):
        response = await fetch(pool, server.origin)
        await first_piece(response)
        await asyncio.sleep(WINDOW)  # the connection fills its buffer and stops reading
        relay = response.relay(writer.transport)
        assert is_kind(relay, splice)
        await relay_all(relay, writer)
        assert await response.read() == b""
        again = await fetch(pool, server.origin)
        connection = again._connection
        assert connection is not None
        await asyncio.sleep(WINDOW)  # room for a client without back-pressure to take it all
        assert server.transports[0].get_write_buffer_size() > 0  # the server is held back
        assert connection._buffered <= LIMIT + SOCKET_READ
        again.release()
    assert server.accepted == 1


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_relay_from_an_https_origin_is_exact_and_hands_the_connection_back(
    loop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over TLS the S3 transport decrypts into the relay's buffer (its protocol is switched
    on the TLS transport, as on a plain one)."""
    tls, cert = tls_server_context(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))

    async def main() -> None:
        client = Client()
        async with (
            scenario(long_reply(), [answer(b"next")], tls=tls) as (server, pool),
            sink_to(client) as writer,
        ):
            response = await fetch(pool, server.origin)
            first = await first_piece(response)
            relay = response.relay(writer.transport)
            assert is_kind(relay, splice=False)  # no splice over TLS
            await relay_all(relay, writer)
            assert await response.read() == b""
            while len(client.received) < relay.relayed:
                client.got.clear()
                await client.got.wait()
            assert first + client.received == BODY
            assert await read_all(await fetch(pool, server.origin)) == b"next"
        assert server.accepted == 1

    run_on(loop, main())
