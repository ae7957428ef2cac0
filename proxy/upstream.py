"""HTTP/1.1 to S3: a keep-alive connection pool, one request at a time per connection, and
response bodies handed over as they arrive, with back-pressure. Knows nothing of S3, signing
or retries (storage.py does those).

Why not aiohttp's client: a general client spends more per request (URL objects, auto headers,
cookie jars, tracing hooks) than everything else a small streamed object costs the proxy. This
one writes a request head it is given and parses the answer with llhttp (httptools), handing
each body piece to the reader exactly as the socket delivered it.

Rules:
1. A connection goes back to the pool only after its response was read to the end; a response
   dropped earlier closes its connection (the rest of its body would otherwise be read as the
   next answer).
2. A reused connection that fails before any byte of the answer arrived was closed by S3 while
   idle: the request is sent again once on a new connection, as every HTTP client does for
   idempotent requests (only GET and HEAD are sent here).
3. While the reader is not reading, the socket is not read either, beyond `buffer_limit` bytes:
   a slow client slows the S3 download instead of filling memory.
4. A request waits at most `pool_timeout` for one of the `max_connections` slots, then fails
   with PoolExhausted: slots are held by downloads in progress, which free up in seconds or
   not at all, so a longer wait only turns a quick refusal into a slow one.
5. A caller's deadline for the response head (`send_head`) bounds every wait before it (a
   slot, a connection, the head) and ends it with DeadlineExceeded; it arms no timer of its
   own, and a connection keeps one timer for all its waits (see _Connection._wait).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import httptools

_IDLE_EXPIRY = 15.0  # seconds an idle connection is trusted; S3 closes them after ~20 s


class MalformedResponse(Exception):
    """S3 (or something in between) answered with bytes that are not valid HTTP/1.1."""


class UpstreamClosed(ConnectionError):
    """The connection ended before the response did."""


class DeadlineExceeded(TimeoutError):
    """The response head did not arrive by the deadline the caller gave (`send_head`)."""


class PoolExhausted(Exception):
    """Rule 4: no connection became free within `pool_timeout`. Deliberately not an OSError
    or TimeoutError: nothing was sent, S3 is not at fault, and retrying would only wait again.
    """


@dataclass(frozen=True)
class Origin:
    scheme: str  # http | https
    host: str  # as resolved and dialled
    port: int


class Response:
    """A response head plus its body, read piece by piece with `read()` (b"" at the end)."""

    __slots__ = ("_connection", "content_length", "headers", "status")

    def __init__(
        self,
        connection: _Connection,
        status: int,
        headers: dict[bytes, str],
        content_length: int | None,
    ) -> None:
        self.status = status
        # Only the headers the pool was asked to read (Pool's `headers_read`) and the body's
        # framing, by lower-case name.
        self.headers = headers
        self.content_length = content_length  # None: the answer did not say (validly)
        self._connection: _Connection | None = connection

    async def read(self) -> bytes:
        connection = self._connection
        if connection is None:
            return b""
        chunk = await connection.read()
        if not chunk:
            self.release()
        return chunk

    def release(self) -> None:
        """Done with this response: its connection is reused if the body was read to the end,
        closed otherwise. Safe to call more than once."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.finish()


# What the connection itself reads of every answer (the body's framing).
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool, origin: Origin, buffer_limit: int) -> None:
        self._pool = pool
        self.kept = pool.headers_read  # the header lines kept of each answer
        self._kept_lengths = pool.headers_read_lengths
        self.origin = origin
        self._loop = asyncio.get_running_loop()
        self._buffer_limit = buffer_limit
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.holds_slot = False  # a Response handed out owns one of the pool's slots
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._head_only = False
        self._fields: dict[bytes, str] = {}  # the kept header lines, names in lower case
        self._length: int | None = None  # a valid Content-Length
        self._head_done = False
        self._status = 0
        self._keep_alive = False
        self._until_eof = False  # no Content-Length, not chunked: the body ends with the socket
        self._remaining: int | None = None  # body bytes still due, when Content-Length said
        self._complete = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        # The wait in progress ends by loop time _until with _expiry raised. One timer per
        # connection checks it, kept armed from wait to wait (see _wait).
        self._until = 0.0
        self._expiry: type[TimeoutError] = TimeoutError
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._failure: BaseException | None = None
        self._got_bytes = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._remaining is not None and self._parser is not None and self._head_done:
            self._take_body(data)
            return
        parser = self._parser
        if parser is None:  # bytes nobody asked for: this connection cannot be trusted
            self._fail(MalformedResponse("data outside a response"))
            return
        self._got_bytes = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(MalformedResponse(type(exc).__name__))

    def _take_body(self, data: bytes) -> None:
        """Body bytes of a Content-Length answer skip the parser, which would copy them."""
        remaining = cast(int, self._remaining)
        if len(data) > remaining:
            self._fail(MalformedResponse("more body than its Content-Length"))
            return
        self._remaining = remaining - len(data)
        self._push(data)
        if not self._remaining:
            self.on_message_complete()

    def eof_received(self) -> bool | None:
        if self._head_done and self._until_eof and not self._complete:
            self.on_message_complete()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pool.forget(self)
        if not self._complete and self._failure is None:
            self._failure = UpstreamClosed("S3 closed the connection")
        self._wake()

    # -- httptools callbacks -----------------------------------------------------------------
    # httptools (0.9) looks the callbacks up when a parser is made and leaves out those the
    # protocol sets to None: these have nothing to do, so llhttp does not call into Python.
    on_message_begin = on_status = on_chunk_header = on_chunk_complete = None

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called for every header line; most are not read (Date, Server, x-amz-id-2, ...):
        # the length of a name rules most of them out before any other work.
        if len(name) in self._kept_lengths and not self._head_done:  # not a trailer
            name = name.lower()
            if name in self.kept:
                self._fields[name] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        parser = self._parser
        if parser is None:  # cannot be: the parser is the caller
            return
        self._status = parser.get_status_code()
        self._keep_alive = parser.should_keep_alive()
        self._head_done = True
        fields = self._fields
        length = fields.get(b"content-length")
        self._length = int(length) if length is not None and length.isdigit() else None
        chunked = "chunked" in fields.get(b"transfer-encoding", "")
        self._until_eof = length is None and not chunked
        if (
            self._length is not None
            and not chunked
            and not self._head_only
            and self._status >= 200
            and self._status not in (204, 304)
        ):
            self._remaining = self._length  # counted down by on_body, then by _take_body
        if self._head_only:
            # A HEAD answer has no body whatever its Content-Length says; llhttp would wait
            # for one, so the message ends here and the parser is dropped.
            self._complete = True
            self._parser = None
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._remaining is not None:
            self._remaining -= len(body)
        self._push(body)

    def _push(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > self._buffer_limit and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._complete = True
        self._parser = None
        self._wake()

    # -- used by Pool and Response -----------------------------------------------------------

    async def exchange(self, head: bytes, head_only: bool, deadline: float | None) -> Response:
        """Send a request head and return the answer once its head is here; a connection
        that fails before is closed. From here the pool slot the request took belongs to the
        response: given back exactly once, when the connection is put back or ends."""
        try:
            self._send(head, head_only)
            while not self._head_done:
                if self._failure is not None:
                    raise self._failure
                await self._wait(deadline)
        except BaseException:
            self.close()
            raise
        self.holds_slot = True
        return Response(self, self._status, self._fields, self._length)

    def _send(self, head: bytes, head_only: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._fields = {}
        self._length = None
        self._head_done = self._complete = self._until_eof = self._got_bytes = False
        self._remaining = None
        self._failure = None
        cast(asyncio.Transport, self.transport).write(head)

    async def read(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= self._buffer_limit and self.transport:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self._complete:
                return b""
            if self._failure is not None:
                raise self._failure
            await self._wait()

    def finish(self) -> None:
        reusable = self._complete and self._keep_alive and not self.lost
        if reusable and not self._chunks and self._failure is None:
            self._pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        self._parser = None
        if self.transport is not None and not self.lost:
            self.transport.abort()

    @property
    def failed_before_answer(self) -> bool:
        return self._failure is not None and not self._got_bytes

    def _fail(self, failure: BaseException) -> None:
        self._failure = failure
        self._wake()
        self.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, deadline: float | None = None) -> None:
        """Until the parser has news; s3.read_timeout without any is a TimeoutError, and
        the `deadline` (loop time), if it comes first, DeadlineExceeded.

        Timers: a wait that ends leaves the connection's timer armed, and the next wait uses
        it when it fires no later than needed: firing early, it finds the wait in progress
        not yet due and re-arms for it (see _check_time). Waits on one connection follow one
        another within milliseconds and time out tens of seconds later, so one timer serves
        many of them, where a timer per wait (armed, cancelled, closed) cost about 8k
        instructions per S3 request."""
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        until = loop.time() + self._pool.read_timeout
        if deadline is not None and deadline < until:
            until, self._expiry = deadline, DeadlineExceeded
        else:
            self._expiry = TimeoutError
        self._until = until
        timer = self._timer
        if timer is None or self._timer_at > until:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(until, self._check_time)
            self._timer_at = until
        try:
            await waiter
        finally:
            self._waiter = None

    def _check_time(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # no wait in progress: the next one arms a timer of its own
        if self._loop.time() + _TIMER_SLACK < self._until:
            self._timer = self._loop.call_at(self._until, self._check_time)  # not yet due
            self._timer_at = self._until
            return
        waiter.set_exception(self._expiry())
        self.close()


# A timer may fire this much (the loop clock's resolution) before the time it was armed for.
_TIMER_SLACK = 0.001


def request_head(
    method: str, target: str, host_header: str, headers: Sequence[tuple[str, str]]
) -> bytes:
    """The bytes of a request head without a body."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class Pool:
    """Connections to S3 endpoints, at most `max_connections` busy at once."""

    def __init__(
        self,
        *,
        max_connections: int,
        pool_timeout: float,
        connect_timeout: float,
        read_timeout: float,
        buffer_limit: int,
        headers_read: Iterable[str] = (),
    ) -> None:
        """`headers_read`: the headers a caller reads of an answer (Response.headers); no
        other is kept, beside the body's framing."""
        self.read_timeout = read_timeout
        self.headers_read = _FRAMING | {name.lower().encode("latin-1") for name in headers_read}
        self.headers_read_lengths = frozenset(len(name) for name in self.headers_read)
        self._pool_timeout = pool_timeout
        self._connect_timeout = connect_timeout
        self._buffer_limit = buffer_limit
        # Rule 4's slots: a count, and the requests waiting for one in arrival order (a
        # slot given back goes straight to the first of them still waiting).
        self._max_connections = max_connections
        self._free = max_connections
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    @property
    def in_use(self) -> int:
        """Slots taken by requests and the responses they got (for the metrics)."""
        return self._max_connections - self._free

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot because `max_connections` are taken (for the metrics)."""
        return sum(1 for waiter in self._slot_waiters if not waiter.done())

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        host_header: str,
        headers: Sequence[tuple[str, str]],
    ) -> Response:
        """Send a request without a body; return once the response head has arrived. The
        caller must `release()` the response (reading it to b"" does that)."""
        return await self.send_head(
            origin, method, request_head(method, target, host_header, headers)
        )

    async def send_head(
        self, origin: Origin, method: str, head: bytes, deadline: float | None = None
    ) -> Response:
        """`request()` with the head already made by `request_head` (a caller that sends the
        same head many times keeps it). With a `deadline` (loop time), everything up to the
        response head (a slot, a connection, the answer) ends by then, else
        DeadlineExceeded."""
        if self._free:
            self._free -= 1  # free: no waiting, no timer on the common path
        else:
            await self._wait_for_slot(deadline)
        head_only = method == "HEAD"
        try:
            connection = self._take_idle(origin)
            if connection is not None:
                try:
                    return await connection.exchange(head, head_only, deadline)
                except UpstreamClosed:
                    if not connection.failed_before_answer:
                        raise
                    # Rule 2: closed by S3 while idle; try once more on a new connection.
            connection = await self._connect(origin, deadline)
            return await connection.exchange(head, head_only, deadline)
        except BaseException:
            self._give_back_slot()
            raise

    async def _wait_for_slot(self, deadline: float | None) -> None:
        """Rule 4."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._slot_waiters.append(waiter)
        refused_at = loop.time() + self._pool_timeout
        by_deadline = deadline is not None and deadline < refused_at
        try:
            async with asyncio.timeout_at(deadline if by_deadline else refused_at):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # The slot was given to this request as it stopped waiting: pass it on.
                self._give_back_slot()
            else:
                waiter.cancel()  # skipped by _give_back_slot, and no longer counted
            if not isinstance(exc, TimeoutError):
                raise
            if by_deadline:
                raise DeadlineExceeded() from None
            raise PoolExhausted(f"no free connection within {self._pool_timeout} s") from None

    def _give_back_slot(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot is that request's now
                return
        self._free += 1

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if not connection.lost and now - connection.idle_since < _IDLE_EXPIRY:
                return connection
            connection.close()
        return None

    async def _connect(self, origin: Origin, deadline: float | None) -> _Connection:
        if self._closed:
            raise UpstreamClosed("the connection pool is closed")
        loop = asyncio.get_running_loop()
        secure = origin.scheme == "https"
        if secure and self._ssl is None:
            self._ssl = ssl.create_default_context()
        gives_up_at = loop.time() + self._connect_timeout
        by_deadline = deadline is not None and deadline < gives_up_at
        try:
            async with asyncio.timeout_at(deadline if by_deadline else gives_up_at):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self, origin, self._buffer_limit),
                    origin.host,
                    origin.port,
                    ssl=self._ssl if secure else None,
                    server_hostname=origin.host if secure else None,
                )
        except TimeoutError:
            if by_deadline:
                raise DeadlineExceeded() from None
            raise
        self._open.add(protocol)
        return protocol

    def put_back(self, connection: _Connection) -> None:
        """Rule 1: only a connection whose response was read to the end is reused."""
        self._release(connection)
        if self._closed:
            connection.close()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(connection.origin, []).append(connection)

    def forget(self, connection: _Connection) -> None:
        """A connection ended: free its slot if it was busy, drop it if it was idle."""
        self._open.discard(connection)
        self._release(connection)
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)

    def _release(self, connection: _Connection) -> None:
        if connection.holds_slot:
            connection.holds_slot = False
            self._give_back_slot()

    async def close(self) -> None:
        self._closed = True
        self._idle.clear()
        for connection in list(self._open):
            connection.close()
        await asyncio.sleep(0)  # let the transports finish closing
