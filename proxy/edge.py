"""The connection edge: what happens before a request reaches the Gateway, and around it.

aiohttp's low-level server parses requests; this module decides what the proxy says about
what it parsed. Its rules:

1. Every answer is the Gateway's. A request the parser rejects, a head that arrived too
   slowly, a bad Host: each becomes a `ProxyError` that `Gateway.__call__` turns into the
   usual JSON body and access-log line. Nothing here writes a response or echoes request
   bytes, and a parser's message (which quotes the request line) is never logged.
2. Each refusal's status is the RFC's: 414 for a target over `limits.max_target_length`
   (measured on the whole target), 431 for an over-long header line, 501 for a method the
   server does not know, 417 for an expectation other than 100-continue, 400 for the rest.
3. Absolute-form targets (`GET http://host/p?q HTTP/1.1`) are routed like `/p?q`: the path
   stays raw, so `%2F` still never splits a segment.
4. Time and connections are bounded per client, before any authentication: a head must arrive
   within `limits.header_timeout`, an idle kept-alive connection closes after
   `limits.keepalive_timeout`, and a client address may hold at most
   `limits.max_connections_per_client` connections (further ones are closed at once: reading
   their request first would hold the very descriptor the cap protects).
5. `Expect: 100-continue` is answered when the body is first read, so a request refused
   before that (wrong type, Content-Length over the limit) gets its final status instead.
6. The client is who the socket says, unless it is a trusted proxy (`listen.trusted_proxies`):
   then a PROXY protocol header (with `listen.proxy_protocol`) names it for the connection, and
   the forwarding headers for each request (forwarded.py). A request's `remote` is that client,
   so limits, logs and audit read one address. Rule 4's cap counts the client a connection is
   known by when it opens: a proxy's own connections carry many clients and are not capped
   (its clients' requests still meet the per-client rate limits and stream caps).
7. Once shutdown begins (`closing`), every response says `Connection: close`, so clients and
   load balancers move to new connections; a request that still arrives is answered.
8. Versions and framing, as RFC 9110 2.5 and RFC 9112 6.1 say: HTTP/1.x above 1.1 is served
   as 1.1 (requestline.py); a major version over 1 is 505; a request line without a version
   (HTTP/0.9) is 400, never an answer without a status line; a transfer coding other than one
   final `chunked` is 501, and Transfer-Encoding in an HTTP/1.0 request 400. Each of these
   refusals closes the connection. Every answer has an HTTP/1.1 status line, an HTTP/1.0
   client's too (as nginx answers), with HTTP/1.0's framing and `Connection: close` unless
   it asked to keep the connection.
9. A HEAD answer carries the header fields its GET would, `Content-Length: 0` of an empty
   body included (aiohttp leaves it out of a bodiless HEAD answer).

This leans on aiohttp's RequestHandler internals (`_make_error_handler`, `_messages`,
`_waiter`); tests/test_edge.py pins the behaviour, so an aiohttp upgrade that moves them fails
there first.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import ERROR, RequestHandler, _ErrInfo
from yarl import URL

from .config import LimitsSettings, ListenSettings
from .errors import (
    BadRequest,
    ExpectationFailed,
    HeaderFieldsTooLarge,
    HttpVersionNotSupported,
    MethodNotImplemented,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
    TransferCodingNotImplemented,
    UriTooLong,
)
from .forwarded import ClientResolver
from .proxyheader import ProxyHeaderError, parse_proxy_header, starts_like_proxy_header
from .requestline import RequestLines

log = logging.getLogger("proxy.edge")

# RFC 9110's methods and PATCH: a route refuses those it does not take with 405 and Allow.
# Anything else (WebDAV, PURGE, ...) the server does not implement at all: 501. CONNECT too,
# since this is an origin server, not a proxy.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"})
# RFC 9110 7.2 / RFC 3986 3.2.2: uri-host [":" port]; an IP literal or a reg-name.
_HOST = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+)(?::[0-9]{0,5})?"
)
# What the Gateway sees for a request the parser could not read: no method, no path, and an
# HTTP/1.1 status line for the answer (aiohttp's placeholder says HTTP/1.0). should_close
# stays set: after a parse error the connection's framing is lost.
_UNPARSED = ERROR._replace(method="-", path="-", version=HttpVersion11)
# Statuses whose answers carry no Content-Length for an empty body (RFC 9110 8.6).
_NO_LENGTH = frozenset({204, 304})
# Fixed parser messages that may be logged as the reason; all others quote request bytes.
_PARSER_REASONS = (
    ("Missing 'Host' header", "missing Host header"),
    ("Duplicate '", "duplicate header"),
)


class HeadTimeout(HttpProcessingError):
    """Stands in for a parser error when the head did not arrive in time."""


def refusal_for_parse_error(
    exc: BaseException, target_limit: int, unsupported_major: bool = False
) -> ProxyError:
    """The answer to a request the parser rejected. `target_limit` is the parser's request
    line limit, which tells an over-long target from an over-long header line;
    `unsupported_major`: the request line named a major version over 1 (rule 8)."""
    if isinstance(exc, HeadTimeout):
        return RequestTimeout("request head not received within limits.header_timeout")
    if unsupported_major:
        return HttpVersionNotSupported("HTTP major version over 1")
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (target_limit,):
            return UriTooLong("request target over limits.max_target_length")
        return HeaderFieldsTooLarge("header line over limits.max_header_bytes")
    if isinstance(exc, BadHttpMethod):
        if "HTTPS traffic" in exc.message:
            return BadRequest("TLS handshake on the plain-HTTP port")
        return MethodNotImplemented("unknown method")
    message = getattr(exc, "message", "")
    if not isinstance(message, str):
        message = ""
    if message.startswith("Too many headers"):
        return HeaderFieldsTooLarge("more headers than limits.max_headers")
    for prefix, reason in _PARSER_REASONS:
        if message.startswith(prefix):
            return BadRequest(reason)
    return BadRequest(f"unparseable request ({type(exc).__name__})")


def check_head(
    message: RawRequestMessage, max_target_length: int
) -> tuple[RawRequestMessage, ProxyError | None, bool]:
    """Check a parsed head before any route sees it. Returns the message to route (an
    absolute-form target rewritten to origin form), the refusal if any, and whether the
    client waits for 100 Continue before sending its body."""
    target = message.path
    if len(target) > max_target_length:
        return message, UriTooLong("request target over limits.max_target_length"), False
    framing = _framing_refusal(message)
    if framing is not None:
        # The connection's framing is not to be trusted after these (rule 8): close it.
        return message._replace(should_close=True), framing, False
    method = message.method
    if method not in KNOWN_METHODS:
        return message, MethodNotImplemented("unknown method"), False
    headers = message.headers
    absolute = not target.startswith("/")
    if absolute:
        message, refusal = _origin_form(message)
        if refusal is not None:
            return message, refusal, False
    hosts = headers.getall("Host", ())
    if len(hosts) > 1:
        return message, BadRequest("several Host headers", detail="invalid Host header"), False
    # RFC 9112 3.2.2: with an absolute-form target, Host is ignored (the target names it).
    if hosts and not absolute and not _HOST.fullmatch(hosts[0]):
        return message, BadRequest("invalid Host header", detail="invalid Host header"), False
    expect = headers.get("Expect")
    if expect is None:
        return message, None, False
    if expect.strip().lower() != "100-continue":
        return message, ExpectationFailed("unsupported Expect"), False
    # RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored.
    return message, None, message.version >= HttpVersion11


def _framing_refusal(message: RawRequestMessage) -> ProxyError | None:
    """Rule 8's refusals of a version or a transfer coding the proxy does not speak."""
    version = message.version
    if version.major > 1:
        return HttpVersionNotSupported("HTTP major version over 1")
    if version < HttpVersion10:
        return BadRequest("request line without an HTTP version", detail="HTTP version required")
    codings = message.headers.getall("Transfer-Encoding", ())
    if not codings:
        return None
    if version == HttpVersion10:
        # RFC 9112 6.1: the framing of an HTTP/1.0 message with Transfer-Encoding is faulty.
        return BadRequest("Transfer-Encoding in an HTTP/1.0 request")
    # The parser has refused a list whose last coding is not chunked (RFC 9112 6.3: 400).
    names = [name.strip().lower() for field in codings for name in field.split(",")]
    if [name for name in names if name] != ["chunked"]:
        return TransferCodingNotImplemented("transfer coding other than chunked")
    return None


def _origin_form(message: RawRequestMessage) -> tuple[RawRequestMessage, ProxyError | None]:
    """RFC 9112 3.2.2: an origin server accepts absolute-form and routes on its path."""
    try:
        parts = urlsplit(message.path)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return message, BadRequest("request target is neither origin- nor absolute-form")
    if "@" in parts.netloc:
        # RFC 9110 4.2.4: userinfo in an http(s) URI is an error, and may carry a password.
        return message, BadRequest("userinfo in the request target")
    path = parts.path or "/"
    target = f"{path}?{parts.query}" if parts.query else path
    url = URL.build(path=path, query_string=parts.query, encoded=True)
    return message._replace(path=target, url=url), None


class EdgeRequest(web.BaseRequest):
    """A request with what the edge decided about its head."""

    ATTRS = web.BaseRequest.ATTRS | frozenset({"refusal", "expects_continue", "via_trusted_proxy"})
    refusal: ProxyError | None = None
    expects_continue = False
    via_trusted_proxy = False  # its client was named by a trusted proxy (rule 6)

    async def read(self) -> bytes:
        length = self.content_length
        if length is not None and length > self._client_max_size:
            # Before 100 Continue, so the client need not send what would be refused.
            raise PayloadTooLarge(f"body of {length} bytes")
        await self.send_continue()
        return await super().read()

    async def send_continue(self) -> None:
        """Ask a client waiting on `Expect: 100-continue` for its body (once): for a body
        read piece by piece from `content`, after every check that could refuse it."""
        if self.expects_continue:
            self.expects_continue = False
            await self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # Called between aiohttp choosing the framing (from the request's version) and
        # writing the status line (with the request's version).
        headers = response.headers
        # aiohttp names itself and its version; a version helps only an attacker.
        headers.popall("Server", None)
        if (
            self.method == "HEAD"
            and isinstance(response, web.Response)
            and not response.body
            and response.status not in _NO_LENGTH
            and "Content-Length" not in headers
        ):
            headers["Content-Length"] = "0"  # rule 9: the GET's empty body has this length
        if self.version != HttpVersion11:
            # Rule 8: the framing stays the client's version's; the status line says 1.1.
            if "Connection" not in headers:
                headers["Connection"] = "close"  # aiohttp would keep it alive: no header
                response.force_close()
            # `version` is cached (reify) in `_cache`: both change, or the line would not.
            self._message = self._message._replace(version=HttpVersion11)
            self._cache["version"] = HttpVersion11
        protocol = self._protocol
        if isinstance(protocol, EdgeProtocol) and protocol._edge.closing:
            # Rule 7. The hook runs after aiohttp wrote its Connection header: set it too.
            response.force_close()
            headers["Connection"] = "close"


_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"


def answer_framing(request: web.BaseRequest, keep_alive: bool | None) -> tuple[bool, bytes]:
    """Rules 7 and 8 for an answer whose head the proxy writes itself (wire.py), as aiohttp's
    `_prepare_headers` and `EdgeRequest._prepare_hook` together decide them for the others:
    whether the connection stays open after it, and its Connection line (b"": none). Its
    status line says HTTP/1.1 whatever the request's version. `keep_alive`: the answer's
    own choice (False after `force_close()`), None to follow the request's."""
    if keep_alive is None:
        keep_alive = request.keep_alive
    protocol = request.protocol
    if isinstance(protocol, EdgeProtocol) and protocol._edge.closing:
        return False, _CLOSE  # rule 7
    version = request.version
    if version == HttpVersion11:
        return (True, b"") if keep_alive else (False, _CLOSE)
    if version == HttpVersion10 and keep_alive:
        return True, _KEEP_ALIVE  # HTTP/1.0 keeps the connection only when it asked to
    return False, _CLOSE  # rule 8: HTTP/1.0 framing, closed


class EdgeProtocol(RequestHandler):
    """One connection: aiohttp's handler plus the edge's deadlines and per-client count."""

    __slots__ = (
        "_admitted",
        "_body_encoded",
        "_client",
        "_client_trusted",
        "_counted",
        "_deadline",
        "_edge",
        "_heads_seen",
        "_idle",
        "_lines",
        "_parse_refusal",
        "_payload",
        "_preface",
        "_recent",
        "_reused",
        "_timed_out",
        "_timer",
    )

    def __init__(self, edge: EdgeServer, **kwargs: Any) -> None:
        super().__init__(edge, **kwargs)
        self._edge = edge
        self._client: str | None = None  # the peer, or the client its PROXY header named
        self._client_trusted = False  # _client is a trusted proxy
        self._counted: str | None = None  # the address this connection counts against
        # With listen.proxy_protocol: the connection's first bytes, until the PROXY header
        # (from a trusted proxy) or its absence (from anyone else) is certain.
        self._preface: bytearray | None = None
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle = True  # no byte of the next head has arrived yet
        self._reused = False  # a response was sent on this connection
        self._timed_out = False
        self._admitted = False
        self._parse_refusal: ProxyError | None = None
        # What requestline.py needs to know where request lines begin (its rule 1).
        self._lines = RequestLines()
        self._heads_seen = 0  # heads the parser gave out, as of the last read
        self._payload: StreamReader | None = None  # the newest request's body
        self._body_encoded = False  # ...and whether it has a Content-Encoding
        self._recent = b""  # the last bytes handed to the parser

    @property
    def client(self) -> str | None:
        """The address this connection's requests come from, before forwarding headers."""
        return self._client

    @property
    def client_trusted(self) -> bool:
        return self._client_trusted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) and peer else None
        edge = self._edge
        resolver = edge.resolver
        self._client = client
        self._client_trusted = resolver.trusts(client) if resolver is not None else False
        if edge.proxy_protocol:
            self._preface = bytearray()
        # A trusted proxy's PROXY header names the client to count, once it has come.
        waits = self._preface is not None and self._client_trusted
        if not waits and not self._admit(client):
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._set_deadline(edge.limits.header_timeout)

    def _admit(self, client: str | None) -> bool:
        """Rule 4's cap, for a connection known by `client` (rule 6: not a trusted proxy's)."""
        if (
            client is None
            or self._client_trusted
            or not self._edge.limits.max_connections_per_client
        ):
            return True
        if not self._edge.admit(client):
            return False
        self._counted = client
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = None
        if self._counted is not None:
            self._edge.release(self._counted)
            self._counted = None
        if not self._admitted:
            return  # refused in connection_made: aiohttp never saw it
        self._admitted = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._preface is not None:
            data = self._take_preface(data)
            if not data:
                return
        if self._timed_out:
            return
        if self._idle and data:
            self._idle = False
            if self._reused:
                self._set_deadline(self._edge.limits.header_timeout)
        heads = self._request_count
        if heads != self._heads_seen:
            self._lines.lost_track()  # heads were parsed elsewhere (after a timeout, an upgrade)
        payload = self._payload
        body_before = payload.total_bytes if payload is not None else 0
        fed = self._lines.feed(data)
        if fed or not data:  # (an empty read is aiohttp resuming its paused parser)
            super().data_received(fed)
        emitted = self._request_count != heads
        if emitted:
            self._deadline = None  # a whole head arrived: its handler runs unhurried
            if self._messages:
                message, self._payload = self._messages[-1]
                self._body_encoded = getattr(message, "compression", None) is not None
        self._heads_seen = self._request_count
        if fed:
            self._follow_request_lines(fed, emitted, body_before)

    def _follow_request_lines(self, fed: bytes, emitted: bool, body_before: int) -> None:
        """Tell requestline.py whether the parser, having read `fed`, is between messages: the
        newest message has ended, and the read ended with it (an empty line ends a head and a
        chunked body; a Content-Length body is known to end there when all of the read was
        body). Otherwise the next request line's start is unknown."""
        self._recent = (self._recent + fed)[-4:]
        payload = self._payload
        if payload is None:
            return  # the first head has not ended yet
        if self._buffer_paused or self._upgraded or not payload.is_eof():
            self._lines.lost_track()
        elif self._recent == b"\r\n\r\n" or (
            not emitted and not self._body_encoded and payload.total_bytes - body_before == len(fed)
        ):
            self._lines.between_messages()
        else:
            self._lines.lost_track()

    def _take_preface(self, data: bytes) -> bytes:
        """listen.proxy_protocol: read a trusted proxy's PROXY header, or make sure anyone
        else sends none (proxyheader.py). The bytes after it; b"" while it is incomplete or
        once the connection is refused."""
        preface = self._preface
        if preface is None:
            return data
        preface += data
        if not self._client_trusted:
            starts = starts_like_proxy_header(bytes(preface))
            if starts is None:
                return b""
            self._preface = None
            if starts:
                return self._refuse("a PROXY header from outside listen.trusted_proxies")
            return bytes(preface)
        try:
            header = parse_proxy_header(bytes(preface))
        except ProxyHeaderError as exc:
            return self._refuse(f"{exc} (listen.proxy_protocol)")
        if header is None:
            return b""
        self._preface = None
        if header.source is not None:
            resolver = self._edge.resolver
            self._client = header.source
            self._client_trusted = resolver is not None and resolver.trusts(header.source)
        if not self._admit(self._client):
            self.force_close()
            return b""
        return bytes(preface[header.length :])

    def _refuse(self, reason: str) -> bytes:
        """Close a connection whose preface is wrong: nothing was asked, nothing is answered."""
        self._edge.note_bad_preface(self._client, reason)
        self.force_close()
        return b""

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        self._idle = True
        self._reused = True
        self._set_deadline(self._edge.limits.keepalive_timeout)
        return result

    def _make_error_handler(
        self, err_info: _ErrInfo
    ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        # The request made next for this error (EdgeServer._make_request) carries the refusal.
        self._parse_refusal = refusal_for_parse_error(
            err_info.exc, self._edge.target_line_limit, self._lines.unsupported_major
        )
        return self._edge.request_handler

    def take_parse_refusal(self) -> ProxyError:
        refusal, self._parse_refusal = self._parse_refusal, None
        return refusal or BadRequest("unparseable request")

    def _set_deadline(self, delay: float) -> None:
        deadline = self._loop.time() + delay
        self._deadline = deadline
        timer = self._timer
        if timer is not None and timer.when() <= deadline:
            return  # fires first; _expire then waits for the later deadline
        if timer is not None:
            timer.cancel()
        self._timer = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.transport is None:
            return
        now = self._loop.time()
        if now < deadline:
            self._timer = self._loop.call_at(deadline, self._expire)
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Busy between requests (discarding an unread body, or a pipelined request is
            # queued): look again later; the response's end sets the next deadline.
            self._set_deadline(self._edge.limits.keepalive_timeout)
            return
        if self._idle:
            self.force_close()  # nothing was asked, so nothing is answered
            return
        # Part of a head came: answer 408 through the Gateway, like any parser error.
        self._timed_out = True
        self._deadline = None
        self._request_count += 1
        error = HeadTimeout()
        self._messages.append((_ErrInfo(status=408, exc=error, message=""), EMPTY_PAYLOAD))
        waiter.set_result(None)


class EdgeServer(web.Server):
    """aiohttp's low-level server with EdgeProtocol connections and EdgeRequest requests."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        limits: LimitsSettings,
        listen: ListenSettings | None = None,
        **kwargs: Any,
    ) -> None:
        # The parser's request-line limit: a little over the target limit (the Python parser
        # counts method and version in it), and never equal to the header-line limit, so
        # that a LineTooLong's limit says which of the two was exceeded.
        line_limit = limits.max_target_length + 32
        if line_limit == limits.max_header_bytes:
            line_limit += 1
        self.target_line_limit = line_limit
        self.limits = limits
        listen = listen or ListenSettings()
        # None without trusted proxies: then nothing per request looks at forwarding headers.
        self.resolver = (
            ClientResolver(listen.trusted_proxies, listen.forwarded_header)
            if listen.trusted_proxies
            else None
        )
        self.proxy_protocol = listen.proxy_protocol
        self.closing = False  # rule 7; set by server.py when shutdown begins
        self._per_client: dict[str, int] = {}
        self._refused = 0
        self._refused_noted = 0.0
        self._bad_prefaces = 0
        self._bad_preface_noted = 0.0
        super().__init__(
            handler,
            request_factory=self._make_request,
            max_line_size=line_limit,
            max_field_size=limits.max_header_bytes,
            max_headers=limits.max_headers,
            **kwargs,
        )

    def __call__(self) -> EdgeProtocol:
        return EdgeProtocol(self, loop=self._loop, **self._kwargs)

    def admit(self, client: str) -> bool:
        """Count one more connection of `client`, unless it holds its cap already."""
        count = self._per_client.get(client, 0)
        if count >= self.limits.max_connections_per_client:
            self._note_refusal(client)
            return False
        self._per_client[client] = count + 1
        return True

    def release(self, client: str) -> None:
        count = self._per_client.get(client, 0)
        if count > 1:
            self._per_client[client] = count - 1
        elif count:
            del self._per_client[client]

    def note_bad_preface(self, client: str | None, reason: str) -> None:
        # At most one line a minute, as for _note_refusal.
        self._bad_prefaces += 1
        now = time.monotonic()
        if now - self._bad_preface_noted >= 60:
            self._bad_preface_noted = now
            log.warning(
                "closed %d connection(s) with a wrong PROXY protocol preface, latest from %s: %s",
                self._bad_prefaces,
                client,
                reason,
            )
            self._bad_prefaces = 0

    def _note_refusal(self, client: str) -> None:
        # At most one line a minute: a flood of refused connections must not flood the log.
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_noted >= 60:
            self._refused_noted = now
            log.warning(
                "closed %d new connection(s) over limits.max_connections_per_client (%d), "
                "latest from %s",
                self._refused,
                self.limits.max_connections_per_client,
                client,
            )
            self._refused = 0

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> EdgeRequest:
        if message is ERROR:
            # Its headers were not read: the client is the connection's.
            request = self._request(_UNPARSED, payload, protocol, writer, task, headers=False)
            if isinstance(protocol, EdgeProtocol):
                request.refusal = protocol.take_parse_refusal()
            else:
                request.refusal = BadRequest("unparseable request")
            return request
        message, refusal, expects_continue = check_head(message, self.limits.max_target_length)
        request = self._request(message, payload, protocol, writer, task)
        if refusal is not None:
            request.refusal = refusal
        if expects_continue:
            request.expects_continue = True
        return request

    def _request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
        headers: bool = True,
    ) -> EdgeRequest:
        """A request whose `remote` (and, from a trusted proxy, `scheme`) is its client."""
        resolver = self.resolver
        if resolver is None or not isinstance(protocol, EdgeProtocol):
            return EdgeRequest(message, payload, protocol, writer, task, self._loop)
        if not (headers and protocol.client_trusted):
            # The peer, or the client its PROXY header named: no header is read.
            loop = self._loop
            return EdgeRequest(
                message, payload, protocol, writer, task, loop, remote=protocol.client
            )
        client = resolver.resolve(protocol.client, message.headers, True)
        request = EdgeRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            self._loop,
            remote=client.address,
            scheme=client.scheme,
        )
        request.via_trusted_proxy = client.via_trusted_proxy
        return request


def via_trusted_proxy(request: web.BaseRequest) -> bool:
    """Whether a trusted proxy named this request's client, so its forwarding headers (and
    headers like X-Request-Id that only such a proxy may set) can be believed."""
    return isinstance(request, EdgeRequest) and request.via_trusted_proxy


def edge_refusal(request: web.BaseRequest) -> ProxyError | None:
    """What the edge decided against this request, for the Gateway to answer."""
    return request.refusal if isinstance(request, EdgeRequest) else None


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (each connection holds a descriptor);
    returns (soft, hard) as they now are."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # e.g. an unlimited hard limit some kernels refuse as a soft one
    return soft, hard
