"""upstream.py over real loopback sockets: a scripted server answers each request with bytes
the test chose, on asyncio's default loop and on uvloop (the product's). No mocks."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.upstream import (
    DeadlineExceeded,
    MalformedResponse,
    Origin,
    Pool,
    PoolExhausted,
    Response,
    UpstreamClosed,
)

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
LOOPBACK = ipaddress.ip_address("127.0.0.1")
LIMIT = 64 * 1024  # every pool's buffer_limit
SOCKET_READ = 256 * 1024  # the most either loop reads from a socket at once
HEADERS_READ = ("ETag", "last-modified", "content-type", "x-extra", "empty", "content-range")
WINDOW = 0.2  # seconds a broken pool gets to misbehave; only a working one waits it out


class Close:
    """A script step: the server closes the connection (FIN) instead of going on."""


CLOSE = Close()
Step = bytes | asyncio.Event | Close  # bytes are written and flushed; an Event is awaited


def on_both_loops(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[str], None]:
    @pytest.mark.parametrize("loop", sorted(LOOPS))
    def run(loop: str) -> None:
        run_on(loop, test())

    return run


def run_on(loop: str, main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(asyncio.wait_for(main, 5))  # a hang fails the test, not the whole run


class ScriptedServer:
    """Answers the n-th request it receives, on whichever connection, with script step list n;
    records each request head with its connection's number, and connections accepted/ended."""

    def __init__(self, replies: Sequence[Sequence[Step]], tls: ssl.SSLContext | None) -> None:
        self.replies = replies
        self.requests: list[tuple[int, bytes]] = []
        self.accepted = self.ended = 0
        self.transports: list[asyncio.WriteTransport] = []
        self._tls = tls
        self._changed = asyncio.Event()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._tls)
        port = self._server.sockets[0].getsockname()[1]
        self.origin = Origin("https" if self._tls else "http", "127.0.0.1", port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            self._changed.clear()
            await self._changed.wait()

    def connections_of_requests(self) -> list[int]:
        return [number for number, _ in self.requests]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.add(cast(asyncio.Task[Any], asyncio.current_task()))
        self.accepted += 1
        number = self.accepted
        # A small send buffer keeps what the kernel absorbs far below the bodies sent here.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LIMIT)
        self.transports.append(writer.transport)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append((number, head))
                self._changed.set()
                for step in self.replies[len(self.requests) - 1]:
                    if isinstance(step, Close):
                        return
                    if isinstance(step, asyncio.Event):
                        await step.wait()
                    else:
                        writer.write(step)
                        await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up, or __aexit__ ended it (3.11 logs a cancelled handler)
        finally:
            writer.close()
            self.ended += 1
            self._changed.set()


@asynccontextmanager
async def scenario(
    *replies: Sequence[Step],
    max_connections: int = 1,
    read_timeout: float = 2.0,
    pool_timeout: float = 2.0,
    tls: ssl.SSLContext | None = None,
    splice: bool = True,
) -> AsyncIterator[tuple[ScriptedServer, Pool]]:
    async with ScriptedServer(replies, tls) as server:
        pool = Pool(
            max_connections=max_connections,
            pool_timeout=pool_timeout,
            connect_timeout=2.0,
            read_timeout=read_timeout,
            buffer_limit=LIMIT,
            splice=splice,
            headers_read=HEADERS_READ,
        )
        try:
            yield server, pool
        finally:
            await pool.close()


def response_head(status: str, *headers: str) -> bytes:
    return "".join(f"{line}\r\n" for line in (f"HTTP/1.1 {status}", *headers)).encode() + b"\r\n"


def answer(body: bytes, *headers: str) -> bytes:
    return response_head("200 OK", f"Content-Length: {len(body)}", *headers) + body


async def fetch(pool: Pool, origin: Origin, method: str = "GET") -> Response:
    return await pool.request(origin, method, "/bucket/key", "s3.test", [("X-Amz-Test", "1")])


async def read_all(response: Response) -> bytes:
    parts = []
    while chunk := await response.read():
        parts.append(chunk)
    return b"".join(parts)


async def still_waiting(task: asyncio.Task[Any]) -> bool:
    done, _ = await asyncio.wait([task], timeout=WINDOW)
    return not done


@on_both_loops
async def test_content_length_body_is_read_and_its_connection_reused() -> None:
    async with scenario([answer(b"first")], [answer(b"second!", "ETag: x")]) as (server, pool):
        first = await fetch(pool, server.origin)
        assert (first.status, first.headers.get(b"content-length")) == (200, "5")
        assert await read_all(first) == b"first"
        assert await first.read() == b""  # after the end, and after release
        second = await fetch(pool, server.origin)
        assert second.headers.get(b"etag") == "x"
        assert await read_all(second) == b"second!"
    assert server.accepted == 1
    assert server.connections_of_requests() == [1, 1]
    assert server.requests[0][1] == (
        b"GET /bucket/key HTTP/1.1\r\nHost: s3.test\r\nX-Amz-Test: 1\r\n\r\n"
    )


@on_both_loops
async def test_chunked_body_split_across_writes_is_decoded() -> None:
    after_hel, after_size_digit = asyncio.Event(), asyncio.Event()
    chunked: list[Step] = [
        response_head("200 OK", "Transfer-Encoding: chunked") + b"5\r\nhel",
        after_hel,
        b"lo\r\n1",  # the chunk size 0x10 is split across two writes
        after_size_digit,
        b"0\r\n0123456789abcdef\r\n3;ext=1\r\nxyz\r\n0\r\n\r\n",
    ]
    async with scenario(chunked, [answer(b"next")]) as (server, pool):
        response = await fetch(pool, server.origin)
        assert await response.read() == b"hel"
        after_hel.set()
        assert await response.read() == b"lo"
        after_size_digit.set()
        assert await read_all(response) == b"0123456789abcdefxyz"
        assert await read_all(await fetch(pool, server.origin)) == b"next"


@on_both_loops
async def test_trailers_of_a_chunked_body_do_not_change_its_headers() -> None:
    trailed = response_head("200 OK", "Transfer-Encoding: chunked", 'ETag: "head"')
    trailed += b'2\r\nok\r\n0\r\nETag: "trailer"\r\nX-Extra: 1\r\n\r\n'
    async with scenario([trailed]) as (server, pool):
        response = await fetch(pool, server.origin)
        assert await read_all(response) == b"ok"
        assert response.headers.get(b"etag") == '"head"'
        assert response.headers.get(b"x-extra") is None
    assert server.accepted == 1


@on_both_loops
async def test_headers_read_are_kept_whatever_their_case_and_however_the_head_arrives() -> None:
    """The pool keeps the header lines its `headers_read` name (and the body's framing),
    names in any case, values as llhttp delimits them; a head that arrived in several reads
    is read whole."""
    head = response_head(
        "200 OK",
        "content-LENGTH: 4",
        "X-Note: etag: not-this-one",
        "X-ETag: nor-this",
        'etag: \t"v1"',
        "Last-Modified:Sun, 06 Dec 2026 14:42:40 GMT",
        "Content-Type: text/plain",
        "Empty:",
        "Server: scripted",
    )
    split_at = head.index(b"etag:") + 2  # the first read ends inside a header name
    first_read = asyncio.Event()
    async with scenario([head[:split_at], first_read, head[split_at:] + b"body"]) as (
        server,
        pool,
    ):
        task = asyncio.ensure_future(fetch(pool, server.origin))
        assert await still_waiting(task)
        first_read.set()
        response = await task
        assert response.content_length == 4
        assert response.headers.get(b"content-length") == "4"
        assert response.headers.get(b"etag") == '"v1"'
        assert response.headers.get(b"last-modified") == "Sun, 06 Dec 2026 14:42:40 GMT"
        assert response.headers.get(b"content-type") == "text/plain"
        assert response.headers.get(b"empty") == ""
        assert response.headers.get(b"content-range") is None
        assert b"server" not in response.headers  # not asked for
        assert await read_all(response) == b"body"


@on_both_loops
async def test_body_without_length_ends_at_eof_and_is_not_reused() -> None:
    until_eof: list[Step] = [response_head("200 OK") + b"until", b" the end", CLOSE]
    async with scenario(until_eof, [answer(b"next")]) as (server, pool):
        response = await fetch(pool, server.origin)
        assert await read_all(response) == b"until the end"
        assert await read_all(await fetch(pool, server.origin)) == b"next"
    assert server.connections_of_requests() == [1, 2]


@on_both_loops
async def test_head_answer_with_length_has_no_body_and_keeps_the_connection() -> None:
    head = response_head("200 OK", "Content-Length: 1000", 'ETag: "abc"')
    async with scenario([head], [answer(b"body")]) as (server, pool):
        response = await fetch(pool, server.origin, "HEAD")
        assert (response.status, response.headers.get(b"content-length")) == (200, "1000")
        assert await response.read() == b""
        response.release()
        assert await read_all(await fetch(pool, server.origin)) == b"body"
    assert server.requests[0][1].startswith(b"HEAD /bucket/key HTTP/1.1\r\n")
    assert server.connections_of_requests() == [1, 1]


@on_both_loops
async def test_304_and_204_have_no_body() -> None:
    not_modified = response_head("304 Not Modified", 'ETag: "abc"')
    no_content = response_head("204 No Content")
    # RFC 9110 lets a 304 carry the Content-Length a 200 would have had.
    not_modified_with_length = response_head("304 Not Modified", "Content-Length: 1234")
    replies = [not_modified], [no_content], [not_modified_with_length], [answer(b"after")]
    async with scenario(*replies) as (server, pool):
        for status in (304, 204, 304):
            response = await fetch(pool, server.origin)
            assert response.status == status
            assert await read_all(response) == b""
        assert await read_all(await fetch(pool, server.origin)) == b"after"
    assert server.accepted == 1


@on_both_loops
async def test_connection_close_answer_is_not_reused() -> None:
    async with scenario([answer(b"bye", "Connection: close")], [answer(b"hi")]) as (server, pool):
        assert await read_all(await fetch(pool, server.origin)) == b"bye"
        await server.until(lambda: server.ended == 1)  # closed by the client, not the server
        assert await read_all(await fetch(pool, server.origin)) == b"hi"
    assert server.connections_of_requests() == [1, 2]


@on_both_loops
async def test_rule_1_a_response_released_early_closes_its_connection() -> None:
    rest_of_body = asyncio.Event()
    partial: list[Step] = [response_head("200 OK", "Content-Length: 10") + b"hello"]
    partial += [rest_of_body, b"world"]
    replies = partial, [answer(b"arrived, unread")], [answer(b"third")]
    async with scenario(*replies) as (server, pool):
        first = await fetch(pool, server.origin)
        first.release()
        first.release()  # idempotent
        rest_of_body.set()  # these bytes must not be taken for the next answer
        second = await fetch(pool, server.origin)
        second.release()  # its body came with the head, unread: closed all the same
        assert await read_all(await fetch(pool, server.origin)) == b"third"
        await server.until(lambda: server.ended == 2)
    assert server.connections_of_requests() == [1, 2, 3]


@on_both_loops
async def test_rule_2_a_connection_closed_while_idle_is_replaced() -> None:
    closed_after_answer: list[Step] = [answer(b"a"), CLOSE]
    replies = closed_after_answer, [answer(b"b")], [CLOSE], [answer(b"c")]
    async with scenario(*replies) as (server, pool):
        assert await read_all(await fetch(pool, server.origin)) == b"a"
        await server.until(lambda: server.ended == 1)
        assert await read_all(await fetch(pool, server.origin)) == b"b"
        # Closed as the next request arrives, before any answer byte: sent again, once.
        assert await read_all(await fetch(pool, server.origin)) == b"c"
    assert server.connections_of_requests() == [1, 2, 2, 3]


@on_both_loops
async def test_rule_2_a_connection_lost_after_answer_bytes_is_not_retried() -> None:
    cut_in_head: list[Step] = [b"HTTP/1.1 200 OK\r\nContent-Le", CLOSE]
    cut_in_body: list[Step] = [response_head("200 OK", "Content-Length: 10") + b"12345", CLOSE]
    async with scenario([answer(b"a")], cut_in_head, cut_in_body, [CLOSE]) as (server, pool):
        assert await read_all(await fetch(pool, server.origin)) == b"a"
        with pytest.raises(UpstreamClosed):
            await fetch(pool, server.origin)  # on the reused connection
        response = await fetch(pool, server.origin)
        assert await response.read() == b"12345"
        with pytest.raises(UpstreamClosed):
            await response.read()
        response.release()
        with pytest.raises(UpstreamClosed):
            await fetch(pool, server.origin)  # a new connection is not retried either
    assert server.connections_of_requests() == [1, 1, 2, 3]


@on_both_loops
async def test_rule_3_a_slow_reader_slows_the_download() -> None:
    body = random.Random(3).randbytes(8 * 1024 * 1024)
    reply = [response_head("200 OK", f"Content-Length: {len(body)}"), body]
    async with scenario(reply, [answer(b"next")]) as (server, pool):
        response = await fetch(pool, server.origin)
        connection = response._connection
        assert connection is not None
        await asyncio.sleep(WINDOW)  # room for a client without back-pressure to take it all
        assert server.transports[0].get_write_buffer_size() > 0  # the server is held back
        received = bytearray()
        while chunk := await response.read():
            received += chunk
            assert connection._buffered <= LIMIT + SOCKET_READ
            await asyncio.sleep(0)  # one piece per loop turn: a slow reader
        assert received == body
        assert await read_all(await fetch(pool, server.origin)) == b"next"
    assert server.accepted == 1


@on_both_loops
async def test_read_timeout_while_waiting_for_body_or_head() -> None:
    stalled_body = [response_head("200 OK", "Content-Length: 10") + b"hel"]
    no_answer: list[Step] = []
    replies = stalled_body, no_answer, [answer(b"ok")]
    async with scenario(*replies, read_timeout=0.2) as (server, pool):
        response = await fetch(pool, server.origin)
        assert await response.read() == b"hel"
        with pytest.raises(TimeoutError):
            await response.read()
        response.release()
        with pytest.raises(TimeoutError):
            await fetch(pool, server.origin)
        assert await read_all(await fetch(pool, server.origin)) == b"ok"
        await server.until(lambda: server.ended == 2)  # both stalled connections closed
    assert server.connections_of_requests() == [1, 2, 3]


@on_both_loops
async def test_malformed_answers_raise_and_drop_the_connection() -> None:
    not_http = [b"SSH-2.0-OpenSSH_9.6\r\n\r\n"]
    bad_chunk = [response_head("200 OK", "Transfer-Encoding: chunked") + b"zz\r\nxx\r\n"]
    trailing_junk = [answer(b"hi") + b"junk"]
    replies = not_http, bad_chunk, trailing_junk, [answer(b"clean")]
    async with scenario(*replies) as (server, pool):
        with pytest.raises(MalformedResponse):
            await fetch(pool, server.origin)
        response = await fetch(pool, server.origin)
        with pytest.raises(MalformedResponse):
            await response.read()
        response.release()
        assert await read_all(await fetch(pool, server.origin)) == b"hi"
        assert await read_all(await fetch(pool, server.origin)) == b"clean"
    assert server.connections_of_requests() == [1, 2, 3, 4]


@on_both_loops
async def test_connection_refused_raises_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with scenario() as (_, pool):
        for _ in range(2):  # the first failure gave its slot back
            with pytest.raises(ConnectionRefusedError):
                await fetch(pool, Origin("http", "127.0.0.1", port))


@on_both_loops
async def test_max_connections_makes_a_request_wait_for_a_released_response() -> None:
    replies = [answer(b"one")], [answer(b"two")], [answer(b"three")], [answer(b"four")]
    async with scenario(*replies) as (server, pool):
        first = await fetch(pool, server.origin)
        second = asyncio.create_task(fetch(pool, server.origin))
        assert await still_waiting(second)
        assert len(server.requests) == 1  # not even sent
        assert await read_all(first) == b"one"  # which releases it
        assert await read_all(await second) == b"two"
        third = await fetch(pool, server.origin)
        fourth = asyncio.create_task(fetch(pool, server.origin))
        assert await still_waiting(fourth)
        third.release()  # unread: the slot comes back when its connection has closed
        assert await read_all(await fourth) == b"four"
    assert server.connections_of_requests() == [1, 1, 1, 2]


@on_both_loops
async def test_rule_4_a_full_pool_refuses_after_pool_timeout_and_leaks_no_slot() -> None:
    replies = [answer(b"one")], [answer(b"two")]
    async with scenario(*replies, pool_timeout=WINDOW) as (server, pool):
        held = await fetch(pool, server.origin)
        with pytest.raises(PoolExhausted):
            await asyncio.wait_for(fetch(pool, server.origin), timeout=5 * WINDOW)
        assert len(server.requests) == 1  # the refused request was never sent
        assert await read_all(held) == b"one"
        # the timed-out wait took no slot with it: the one slot is free again
        assert await read_all(await fetch(pool, server.origin)) == b"two"


@on_both_loops
async def test_a_deadline_bounds_the_wait_for_a_slot_and_for_the_head() -> None:
    """send_head's deadline (loop time) ends every wait before the response head: for a
    slot, sooner than pool_timeout; for the head, sooner than read_timeout. Either way it
    is DeadlineExceeded (a TimeoutError), the stalled connection is dropped, and no slot
    is kept; past read_timeout without a deadline, it is a plain TimeoutError."""
    replies = [answer(b"one")], [], [answer(b"three")], [], [answer(b"five")]
    async with scenario(*replies, pool_timeout=30, read_timeout=30) as (server, pool):
        loop = asyncio.get_running_loop()
        head = b"GET /bucket/key HTTP/1.1\r\nHost: s3.test\r\n\r\n"
        held = await pool.send_head(server.origin, "GET", head)
        started = loop.time()
        with pytest.raises(DeadlineExceeded):
            await pool.send_head(server.origin, "GET", head, started + WINDOW)
        assert loop.time() - started < 10 * WINDOW
        assert len(server.requests) == 1  # never sent
        assert await read_all(held) == b"one"
        assert pool.in_use == 0
        started = loop.time()
        with pytest.raises(DeadlineExceeded):  # S3 answers nothing
            await pool.send_head(server.origin, "GET", head, started + WINDOW)
        assert loop.time() - started < 10 * WINDOW
        await server.until(lambda: server.ended == 1)  # the stalled connection was closed
        assert await read_all(await pool.send_head(server.origin, "GET", head)) == b"three"
    async with scenario([], [answer(b"ok")], read_timeout=WINDOW) as (server, pool):
        with pytest.raises(TimeoutError) as raised:
            await pool.send_head(server.origin, "GET", head, loop.time() + 30)
        assert not isinstance(raised.value, DeadlineExceeded)  # read_timeout came first
        assert pool.in_use == 0
        assert await read_all(await fetch(pool, server.origin)) == b"ok"


@on_both_loops
async def test_a_timer_left_armed_by_one_wait_neither_cuts_nor_stretches_the_next() -> None:
    """_Connection keeps its timer armed from wait to wait: one armed for an earlier, shorter
    deadline must not end a later wait before its own time, and one armed for a later time
    must not let a shorter deadline pass."""
    head = b"GET /bucket/key HTTP/1.1\r\nHost: s3.test\r\n\r\n"
    replies = [answer(b"quick")], [], [answer(b"again")], []
    async with scenario(*replies, read_timeout=4 * WINDOW) as (server, pool):
        loop = asyncio.get_running_loop()
        # Armed for WINDOW from now; answered at once, so that timer is left armed.
        quick = await pool.send_head(server.origin, "GET", head, loop.time() + WINDOW)
        assert await read_all(quick) == b"quick"
        started = loop.time()
        with pytest.raises(TimeoutError) as raised:  # no deadline: read_timeout, 4 WINDOWs
            await pool.send_head(server.origin, "GET", head)
        assert not isinstance(raised.value, DeadlineExceeded)
        assert loop.time() - started >= 3.5 * WINDOW  # the early timer re-armed, not fired
        # A fresh connection whose timer is armed read_timeout ahead by a wait without a
        # deadline; then a deadline much nearer than that.
        again = await pool.send_head(server.origin, "GET", head)
        assert await read_all(again) == b"again"
        started = loop.time()
        with pytest.raises(DeadlineExceeded):
            await pool.send_head(server.origin, "GET", head, loop.time() + WINDOW / 2)
        assert loop.time() - started < 2 * WINDOW
    assert server.connections_of_requests() == [1, 1, 2, 2]


@on_both_loops
async def test_a_slot_given_back_goes_to_the_request_waiting_longest() -> None:
    replies = [answer(b"1")], [answer(b"2")], [answer(b"3")]
    async with scenario(*replies) as (server, pool):
        held = await fetch(pool, server.origin)
        second = asyncio.create_task(fetch(pool, server.origin))
        assert await still_waiting(second)
        third = asyncio.create_task(fetch(pool, server.origin))
        assert await still_waiting(third)
        assert pool.waiting == 2
        assert await read_all(held) == b"1"
        assert await read_all(await second) == b"2"
        assert await read_all(await third) == b"3"
        assert (pool.in_use, pool.waiting) == (0, 0)


@on_both_loops
async def test_a_connection_lost_before_its_answer_gives_back_one_slot() -> None:
    replies = [CLOSE], [answer(b"a")], [CLOSE], [answer(b"b")], [answer(b"c")], [answer(b"d")]
    async with scenario(*replies) as (server, pool):
        with pytest.raises(UpstreamClosed):
            await fetch(pool, server.origin)
        assert await read_all(await fetch(pool, server.origin)) == b"a"
        assert await read_all(await fetch(pool, server.origin)) == b"b"  # retried
        held = await fetch(pool, server.origin)
        waiting = asyncio.create_task(fetch(pool, server.origin))
        assert await still_waiting(waiting), "two requests at once with max_connections=1"
        held.release()
        assert await read_all(await waiting) == b"d"


@on_both_loops
async def test_pool_close_closes_connections_and_refuses_requests() -> None:
    partial = [response_head("200 OK", "Content-Length: 10") + b"12345"]  # 5 bytes short
    replies = [answer(b"1")], [answer(b"2")], partial
    async with scenario(*replies, max_connections=2) as (server, pool):
        first = await fetch(pool, server.origin)
        second = await fetch(pool, server.origin)  # the first is busy: a second connection
        assert [await read_all(first), await read_all(second)] == [b"1", b"2"]
        busy = await fetch(pool, server.origin)
        await pool.close()
        await server.until(lambda: server.ended == 2)  # one was idle, one busy
        assert await busy.read() == b"12345"
        with pytest.raises(UpstreamClosed):
            await busy.read()
        busy.release()
        with pytest.raises(UpstreamClosed):
            await fetch(pool, server.origin)
    assert server.accepted == 2


def tls_server_context(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and its PEM file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder(
            issuer_name=name,
            subject_name=name,
            public_key=key.public_key(),
            serial_number=x509.random_serial_number(),
            not_valid_before=now - dt.timedelta(hours=1),
            not_valid_after=now + dt.timedelta(hours=1),
        )
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8, unencrypted = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, unencrypted))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_https_origin_is_verified_and_trusted_through_ssl_cert_file(
    loop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls, cert = tls_server_context(tmp_path)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)

    async def main() -> None:
        async with scenario([answer(b"never sent")], tls=tls) as (server, pool):
            with pytest.raises(ssl.SSLCertVerificationError) as failure:
                await fetch(pool, server.origin)
        assert isinstance(failure.value, OSError)  # what storage.py retries and maps
        assert server.requests == []
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read at a pool's first https dial
        async with scenario([answer(b"secret")], [answer(b"again")], tls=tls) as (server, pool):
            assert await read_all(await fetch(pool, server.origin)) == b"secret"
            assert await read_all(await fetch(pool, server.origin)) == b"again"
        assert server.connections_of_requests() == [1, 1]

    run_on(loop, main())
