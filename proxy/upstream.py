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
5. The rest of a long Content-Length body may be relayed (`Response.relay`): read from S3's
   socket into one buffer of `buffer_limit` bytes and handed to the client's transport from
   the read callback, with no copy, no task wake-up and no Python layer per piece. The buffer
   is reused only once the client's transport holds none of it: until then the S3 socket is
   not read (rule 3 still holds, with one buffer per stream). Between two plain sockets on
   Linux the buffer is a pipe and the kernel moves the bytes (splice(2), SpliceRelay); over
   TLS, or once the user's pipe quota is spent, the buffer relay does it.
6. A caller's deadline for the response head (`send_head`) bounds every wait before it (a
   slot, a connection, the head) and ends it with DeadlineExceeded; it arms no timer of its
   own, and a connection keeps one timer for all its waits (see _Connection._wait).
"""

from __future__ import annotations

import asyncio
import os
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

    def relay(self, sink: asyncio.Transport) -> Relay | None:
        """Rule 5 for the rest of this body, or None (then read() it)."""
        connection = self._connection
        return connection.relay(sink) if connection is not None else None

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

    def relay(self, sink: asyncio.Transport) -> Relay | None:
        """Rule 5, or None when the body's rest is short, unknown in length or already in."""
        remaining = self._remaining
        if (
            remaining is None
            or remaining <= self._buffer_limit
            or self._complete
            or self._failure is not None
            or self.transport is None
            or self.lost
        ):
            return None
        relay = _relay_between(self, self.transport, sink)
        relay.start()
        return relay

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


RELAY_DONE = 0  # every byte of the body went to the client's transport
RELAY_DRAIN = 1  # the client's transport holds some of the buffer: S3 is not read until it took it
RELAY_CLIENT_GONE = 2  # the client's transport closed (hung up, cut by the proxy): S3 is not read


class Relay(asyncio.BufferedProtocol):
    """Rule 5: the S3 transport's protocol while the rest of a Content-Length body goes from
    its socket to `sink`, then the connection's again. The stream's task only acts when the
    relay stops: `next()` says why, and after RELAY_DRAIN, once the client's transport is
    empty (the sink's write buffer limits are 0 while relaying, so its protocol's drain
    waits for exactly that), `resume()`. `close()` when done, whatever happened.

    As read in uvloop 0.23 and aiohttp 3.14.5: uvloop's transport keeps a reference to a
    written memoryview until the kernel took it (asyncio's 3.11 transport copies it), hence
    the rule that the buffer is not read into while the sink holds any byte; aiohttp's
    `StreamWriter.drain()` waits while its protocol is paused, which a transport does above
    its high-water mark and undoes at its low one. tests/test_upstream_relay.py and
    tests/test_stream_relay.py pin both (the latter corrupts bytes if the rule is broken)."""

    __slots__ = (
        "_connection",
        "_last_read",
        "_limits",
        "_loop",
        "_sink",
        "_size",
        "_state",
        "_timer",
        "_transport",
        "_view",
        "_waiter",
        "relayed",
    )

    def __init__(
        self, connection: _Connection, transport: asyncio.Transport, sink: asyncio.Transport
    ) -> None:
        self._connection = connection
        self._transport = transport
        self._sink = sink
        self._loop = connection._loop
        self._size = connection._buffer_limit
        self._view = self._buffer()
        self._state: int | None = None  # news for the stream's task, or None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = self._loop.time()
        self._limits: tuple[int, int] | None = None
        self.relayed = 0  # body bytes handed to the sink by the relay

    def _buffer(self) -> memoryview:
        return memoryview(bytearray(self._size))

    def start(self) -> None:
        if not self._take_over():
            return
        connection = self._connection
        # Pausing is the relay's from here (and the connection's flag must not outlive it).
        paused, connection._paused = connection._paused, False
        self._transport.set_protocol(self)
        if self._sink.get_write_buffer_size():
            self._stop(RELAY_DRAIN)
        elif paused:
            self._transport.resume_reading()

    def _take_over(self) -> bool:
        """Hand the sink the pieces already read and make its protocol pause while it holds
        any byte; False (and RELAY_CLIENT_GONE) when the sink is closed already."""
        connection, sink = self._connection, self._sink
        if sink.is_closing():
            self._state = RELAY_CLIENT_GONE
            return False
        # Pieces already read are bytes, which the sink may keep: they go first.
        chunks = connection._chunks
        while chunks:
            piece = chunks.popleft()
            sink.write(piece)
            self.relayed += len(piece)
        connection._buffered = 0
        self._limits = sink.get_write_buffer_limits()
        sink.set_write_buffer_limits(high=0)  # its protocol pauses while it holds any byte
        return True

    # -- asyncio.BufferedProtocol ------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        connection = self._connection
        remaining = cast(int, connection._remaining) - nbytes
        if remaining < 0:
            connection._fail(MalformedResponse("more body than its Content-Length"))
            self._wake()
            return
        connection._remaining = remaining
        sink = self._sink
        if sink.is_closing():  # the rest is not read: the connection is closed on release
            self._stop(RELAY_CLIENT_GONE)
            return
        sink.write(self._view if nbytes == self._size else self._view[:nbytes])
        self.relayed += nbytes
        self._last_read = self._loop.time()
        if not remaining:
            # The buffer is never reused from here: the sink may still hold some of it.
            self._transport.set_protocol(connection)
            connection.on_message_complete()
            self._state = RELAY_DONE
            self._wake()
            return
        if sink.get_write_buffer_size():
            self._stop(RELAY_DRAIN)

    def eof_received(self) -> bool | None:
        return self._connection.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection.connection_lost(exc)
        self._wake()

    # -- used by the stream's task -----------------------------------------------------------

    async def next(self) -> int:
        """RELAY_DONE, RELAY_DRAIN or RELAY_CLIENT_GONE; S3's failures are raised, as read()
        raises them (s3.read_timeout without a byte is a TimeoutError)."""
        while self._state is None:
            failure = self._connection._failure
            if failure is not None:
                raise failure
            waiter = self._waiter = self._loop.create_future()
            self._timer = self._loop.call_later(self._connection._pool.read_timeout, self._check)
            try:
                await waiter
            finally:
                if self._timer is not None:
                    self._timer.cancel()
                self._waiter = None
        state, self._state = self._state, None
        return state

    def resume(self) -> None:
        """After RELAY_DRAIN, once the sink holds nothing more: read S3 again."""
        self._last_read = self._loop.time()
        self._transport.resume_reading()

    def close(self) -> None:
        """The sink's write buffer limits as they were (if it is still open)."""
        limits, self._limits = self._limits, None
        if limits is not None and not self._sink.is_closing():
            self._sink.set_write_buffer_limits(high=limits[1], low=limits[0])

    def _stop(self, state: int) -> None:
        self._transport.pause_reading()
        self._state = state
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        idle = self._loop.time() - self._last_read
        timeout = self._connection._pool.read_timeout
        if idle < timeout:
            # Re-armed, not reset per piece: one timer per wait, whatever the pieces.
            self._timer = self._loop.call_later(timeout - idle, self._check)
            return
        waiter.set_exception(TimeoutError())
        self._connection.close()
        self._release()

    def _release(self) -> None:
        """What the relay holds besides its buffer, given back once it cannot go on."""


def _relay_between(
    connection: _Connection, transport: asyncio.Transport, sink: asyncio.Transport
) -> Relay:
    """A splice relay between two plain sockets where the system has splice(2), else the
    buffer relay (TLS on either side, other systems, a pipe quota spent)."""
    if connection._pool.splice:
        s3_fd, client_fd = _plain_socket(transport), _plain_socket(sink)
        if s3_fd is not None and client_fd is not None:
            try:
                return SpliceRelay(connection, transport, sink, s3_fd, client_fd)
            except OSError:
                pass
    return Relay(connection, transport, sink)


_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_SPLICES_PER_EVENT = 16  # pieces moved per readiness event at most, so others get their turn


def _plain_socket(transport: asyncio.BaseTransport) -> int | None:
    """The descriptor of a plain TCP transport (no TLS), or None."""
    if transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else None


class SpliceRelay(Relay):
    """Rule 5 between two plain TCP sockets, on Linux: S3's socket -> a pipe -> the client's
    socket with splice(2), the kernel passing pages on instead of copying the bytes into
    the proxy and out again. The S3 transport stays paused; a duplicate of its descriptor
    is watched for readability (a loop refuses to watch a transport's own). The client's
    descriptor is written only in a callback that has just seen its transport open and
    holding nothing, so the descriptor is still that transport's and the bytes go in order;
    the client's transport keeps it (an abort closes it as ever). What the client's socket
    cannot take at once is read back from the pipe and handed to its transport (a copy),
    and the relay stops for its drain, as the buffer relay does."""

    __slots__ = ("_client_fd", "_pipe_r", "_pipe_w", "_s3_fd", "_watching")

    def __init__(
        self,
        connection: _Connection,
        transport: asyncio.Transport,
        sink: asyncio.Transport,
        s3_fd: int,
        client_fd: int,
    ) -> None:
        super().__init__(connection, transport, sink)
        self._client_fd = client_fd
        self._watching = False
        self._s3_fd = os.dup(s3_fd)
        try:
            self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            os.close(self._s3_fd)
            raise
        import fcntl  # here: a module of the systems with splice(2) only

        try:
            fcntl.fcntl(self._pipe_w, fcntl.F_SETPIPE_SZ, self._size)
        except OSError:
            self._close_descriptors()  # over the user's pipe quota: the buffer relay will do
            raise

    def _buffer(self) -> memoryview:
        return memoryview(b"")  # none: the pipe is the buffer

    def start(self) -> None:
        if not self._take_over():
            return
        self._connection._paused = True  # the transport does not read while the relay does
        self._transport.pause_reading()
        if self._sink.get_write_buffer_size():
            self._state = RELAY_DRAIN
            return
        self._watch()

    def _readable(self) -> None:
        connection, sink = self._connection, self._sink
        if connection._failure is not None or connection.lost:
            self._release()  # closed by a timeout or a failure: the task is told by next()
            self._wake()
            return
        # As a transport reads: on, while the socket has more, a bounded number of times.
        for _ in range(_SPLICES_PER_EVENT):
            if sink.is_closing():
                self._stop(RELAY_CLIENT_GONE)
                return
            if not self._move():
                return

    def _move(self) -> bool:
        """One piece from S3's socket to the client's; False when there is nothing to go on
        with (no more bytes now, or the relay stopped)."""
        connection, sink = self._connection, self._sink
        remaining = cast(int, connection._remaining)
        want = min(self._size, remaining)
        try:
            got = os.splice(self._s3_fd, self._pipe_w, want, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._release()
            connection._fail(UpstreamClosed(f"S3 connection failed ({type(exc).__name__})"))
            self._wake()
            return False
        if not got:
            self._release()
            connection._fail(UpstreamClosed("S3 closed the connection"))
            self._wake()
            return False
        remaining -= got
        connection._remaining = remaining
        self._last_read = self._loop.time()
        # The client's transport is open (checked before each piece) and holds nothing (a
        # piece it took a part of stops the relay): its descriptor is its own, and these
        # bytes come next.
        sent = 0
        try:
            # (A transport holding bytes would have stopped the relay; checked all the same,
            # as the bytes' order depends on it.)
            while sent < got and not sink.get_write_buffer_size():
                sent += os.splice(self._pipe_r, self._client_fd, got - sent, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            pass
        except OSError:
            self.relayed += sent
            self._stop(RELAY_CLIENT_GONE)
            return False
        self.relayed += sent
        if sent < got:  # the client's socket is full: its transport takes the rest
            rest = bytearray()
            while len(rest) < got - sent:
                rest += os.read(self._pipe_r, got - sent - len(rest))
            sink.write(rest)
            self.relayed += len(rest)
        if not remaining:
            self._release()
            connection._paused = False
            self._transport.resume_reading()  # its protocol is the connection's throughout
            connection.on_message_complete()
            self._state = RELAY_DONE
            self._wake()
            return False
        if sent < got:
            self._stop(RELAY_DRAIN)
            return False
        return got == want  # a short piece: the socket is likely empty now

    def resume(self) -> None:
        self._last_read = self._loop.time()
        connection = self._connection
        if self._state is None and not connection.lost and connection._failure is None:
            self._watch()

    def close(self) -> None:
        self._release()
        super().close()

    def _release(self) -> None:
        self._unwatch()
        self._close_descriptors()

    def _stop(self, state: int) -> None:
        if state == RELAY_DRAIN:
            self._unwatch()
        else:
            self._release()  # gone: its S3 socket must close when the connection does
        self._state = state
        self._wake()

    def _watch(self) -> None:
        if not self._watching and self._s3_fd >= 0:
            self._loop.add_reader(self._s3_fd, self._readable)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._s3_fd)
            self._watching = False

    def _close_descriptors(self) -> None:
        # Removed from the loop first (above): a closed duplicate still watched would keep
        # reporting the S3 socket's events under a number that may be reused.
        for name in ("_s3_fd", "_pipe_r", "_pipe_w"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


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
        splice: bool = True,
        headers_read: Iterable[str] = (),
    ) -> None:
        """`headers_read`: the headers a caller reads of an answer (Response.headers); no
        other is kept, beside the body's framing."""
        self.read_timeout = read_timeout
        # Rule 5 with splice(2) between plain sockets where the system has it; False: the
        # buffer relay always (tests run both).
        self.splice = splice and hasattr(os, "splice")
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
