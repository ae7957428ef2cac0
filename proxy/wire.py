"""Answers whose head the proxy serializes itself: the hot answers' fixed header fields are
checked and encoded once, kept as bytes (per route and key, per object's metadata, per
signed URL), and each request adds only its own lines. Never chooses a status or a field's
value: it writes what delivery chose, as aiohttp would have written it.

Why: aiohttp's StreamResponse builds a header multidict per answer, fills in its defaults,
asks the request's prepare hook (edge.py), and its serializer checks every character of
every field for CR/LF on every request: about a fifth of a small answer's CPU.

Rules:
1. A field is refused (ValueError) when its name or value holds a control character other
   than tab, as aiohttp's serializer refuses it; it is encoded as aiohttp encodes (UTF-8,
   lone surrogates dropped). The check runs when a head is built, before prepare(), so the
   Gateway answers such a failure like any other error.
2. Per request, only lines the proxy makes itself are added: Content-Length (always, a
   HEAD's too, as its GET's: edge.py rule 9), Age, X-Request-Id (validated where it is
   made: request.py), Date (aiohttp's, formatted once a second), the Connection line of
   edge.py's rules 7 and 8 (`answer_framing`), and `application/octet-stream` as the type of
   an untyped non-empty body (aiohttp's default). Those names are never in a head's fields.
   No Server field (edge.py removes aiohttp's from the others).
3. The head goes out with the first body bytes (or the whole body) in one write; a HEAD,
   204 or 304 answer sends no body, and body bytes past Content-Length are not sent.
4. `headers` is the whole head as a multidict, made on first use; once used, the head is
   serialized from it (rule 1's check included) instead of the kept bytes. What a
   StreamResponse offers and this one would not send (cookies, compression, chunking) raises.

`WireResponse` is an aiohttp StreamResponse (read in aiohttp 3.14.5: web_response.py,
web_protocol.py, http_writer.py) so that aiohttp's RequestHandler handles it like any other:
prepare() and write_eof() from finish_response, `keep_alive` for the connection, the
writer's `output_size` (handle_error reads it to know whether an answer began), and
ConnectionError from a closed transport. Bytes go through the request's StreamWriter
(`write`, `write_eof`, `drain`): back-pressure and accounting are aiohttp's. It never runs
an Application's on_response_prepare signals (the proxy has no Application).
tests/test_wire.py pins what this leans on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus
from http.cookies import SimpleCookie
from typing import Any

from aiohttp import ClientConnectionResetError, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from multidict import CIMultiDict, CIMultiDictProxy

from .edge import answer_framing

# aiohttp's _serialize_headers refuses these (RFC 9110 5.5, RFC 9112 4).
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Rule 2: lines made per request, never in a head's fields.
_PER_REQUEST = frozenset(
    {"content-length", "date", "connection", "x-request-id", "age", "server", "transfer-encoding"}
)
_NO_LENGTH = frozenset({204, 304, *range(100, 200)})


def header_lines(fields: Mapping[str, str]) -> bytes:
    """`Name: value\\r\\n` for each field, checked and encoded as rule 1 says."""
    # A printable string holds no control character (the common case, one C call for all
    # fields); otherwise the exact rule decides, which lets a tab through.
    if not "".join([*fields.keys(), *fields.values()]).isprintable():
        for name, value in fields.items():
            if _FORBIDDEN.search(name) is not None or _FORBIDDEN.search(value) is not None:
                raise ValueError(f"control character in the header field {name[:40]!r}")
    if not fields:
        return b""
    # (str.join mapped over the pairs: no Python frame per field.)
    return ("\r\n".join(map(": ".join, fields.items())) + "\r\n").encode("utf-8", "ignore")


class WireHead:
    """The fixed fields of an answer, as given and as checked bytes. `cors`: the request's
    CORS fields it includes (the Gateway adds them to an answer whose head lacks them)."""

    __slots__ = ("_framed", "cors", "fields", "lines", "typed")

    def __init__(self, fields: Mapping[str, str], cors: Mapping[str, str] | None = None) -> None:
        view = CIMultiDictProxy(CIMultiDict(fields))
        if not _PER_REQUEST.isdisjoint(map(str.lower, view)):
            taken = sorted(_PER_REQUEST.intersection(name.lower() for name in view))
            raise ValueError(f"{taken} are written per request, not kept in a head")
        self.fields = view
        self.lines = header_lines(view)
        self.typed = "Content-Type" in view
        self.cors = cors
        # The last framed() answer: (status, length, bodiless) and its bytes.
        self._framed: tuple[int, int, bool, bytes] = (0, 0, False, b"")

    def framed(self, status: int, length: int, bodiless: bool) -> bytes:
        """The status line, these fields, and the framing fields rule 2 adds: remembered for
        the last (status, length, bodiless), which a hot object's answers repeat."""
        last = self._framed
        if last[0] == status and last[1] == length and last[2] is bodiless:
            return last[3]
        framed = _framed(status, self.lines, self.typed, length, bodiless)
        self._framed = (status, length, bodiless, framed)
        return framed


def _framed(status: int, lines: bytes, typed: bool, length: int, bodiless: bool) -> bytes:
    parts = [_status_line(status), lines]
    if status not in _NO_LENGTH:
        parts.append(b"Content-Length: %d\r\n" % length)
        if length and not typed and not bodiless:
            parts.append(b"Content-Type: application/octet-stream\r\n")
    return b"".join(parts)


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {_reason(status)}\r\n".encode()
    return line


def _reason(status: int) -> str:
    return _REASONS.get(status, "")  # as aiohttp: an unknown status has an empty one


_REASONS = {status.value: status.phrase for status in HTTPStatus}


_date = ""
_date_line = b""
# aiohttp's StreamWriter.write drains the socket's buffer past this many bytes written.
_DRAIN_PAST = 0x10000


class WireResponse(web.StreamResponse):
    """An answer of `length` body bytes whose head is `head` plus the lines rule 2 adds.
    `body`: the whole body, sent by write_eof (else the caller write()s it after prepare()).
    Set `request_id` and `age` before prepare().

    Writes go to the transport as aiohttp's StreamWriter.write does for an answer with a
    Content-Length and no compression (the only kind this class makes): counted in the
    writer's `output_size` and `buffer_size`, ClientConnectionResetError on a closing
    transport, a drain past 64 KiB written and at the end (tests/test_wire.py)."""

    _edited: CIMultiDict[str] | None = None  # `headers`, once asked for
    _pending: bytes | None = None  # the serialized head, until it is written
    _wire_body: bytes | None = None
    request_id: str | None = None
    age: int | None = None

    def __init__(self, status: int, head: WireHead, length: int, body: bytes | None = None) -> None:
        # StreamResponse.__init__'s state, without its multidict: the head's read-only view
        # stands for the headers (so the base's header properties read it) until `headers`
        # is first asked for. (Per-answer attributes are few: a hot path sets each one.)
        self._state = {}
        self._headers = head.fields  # type: ignore[assignment]
        self._status = status
        self._reason = _REASONS.get(status, "")
        self._head = head
        self._length = self._left = length  # _left: body bytes still to send
        if body is not None:
            self._wire_body = body

    @property
    def cors(self) -> Mapping[str, str] | None:
        """The CORS fields the head was built with."""
        return self._head.cors

    @property
    def headers(self) -> CIMultiDict[str]:
        edited = self._edited
        if edited is None:
            edited = self._edited = self._headers = CIMultiDict(self._head.fields)
        return edited

    # What StreamResponse offers and this class would silently not send: refused at once.
    # (Cookies go through `headers`, as Set-Cookie fields.)
    @property
    def cookies(self) -> SimpleCookie:
        raise RuntimeError("a WireResponse sends cookies as Set-Cookie fields in `headers`")

    def set_cookie(self, name: str, value: str, **_: Any) -> None:
        raise RuntimeError("a WireResponse sends cookies as Set-Cookie fields in `headers`")

    def del_cookie(self, name: str, **_: Any) -> None:
        raise RuntimeError("a WireResponse sends cookies as Set-Cookie fields in `headers`")

    def enable_compression(self, *_: Any, **__: Any) -> None:
        raise RuntimeError("a WireResponse is never compressed")

    def enable_chunked_encoding(self, *_: Any, **__: Any) -> None:
        raise RuntimeError("a WireResponse has a Content-Length")

    @property
    def content_length(self) -> int | None:
        return self._length

    @content_length.setter
    def content_length(self, value: int | None) -> None:
        raise RuntimeError("a WireResponse's length is given when it is made")

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = self._payload_writer
        if writer is not None or self._eof_sent:
            return writer
        self._req = request
        writer = self._payload_writer = request._payload_writer
        status = self._status
        method = request.method
        # aiohttp's must_be_empty_body, inline.
        bodiless = self._must_be_empty_body = (
            method == "HEAD"
            or status in _NO_LENGTH
            or (method == "CONNECT" and 200 <= status < 300)
        )
        keep_alive, connection = answer_framing(request, self._keep_alive)
        self._keep_alive = keep_alive
        edited = self._edited
        if edited is None:
            framed = self._head.framed(status, self._length, bodiless)
        else:
            typed = "Content-Type" in edited
            framed = _framed(status, header_lines(edited), typed, self._length, bodiless)
        parts = [framed]
        if self.age is not None:
            parts.append(b"Age: %d\r\n" % self.age)
        request_id = self.request_id
        if request_id is not None:
            if not request_id.isprintable():  # (request.py makes them safe: rule 1 anyway)
                raise ValueError("control character in the request id")
            parts.append(f"X-Request-Id: {request_id}\r\n".encode())
        global _date, _date_line
        now = rfc822_formatted_time()  # aiohttp formats it once a second
        if now is not _date:
            _date, _date_line = now, f"Date: {now}\r\n".encode("ascii")
        parts += (_date_line, connection, b"\r\n")
        self._pending = b"".join(parts)
        if bodiless:
            self._left = 0
        return writer

    def _with_head(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """Rule 3: the body bytes that may still go, behind the head if it has not gone."""
        left = self._left
        if len(data) > left:
            data = data[:left]
        self._left = left - len(data)
        pending = self._pending
        if pending is None:
            return data
        self._pending = None
        return pending + data if data else pending

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        writer = self._payload_writer
        if writer is None:
            if self._eof_sent:
                raise RuntimeError("Cannot call write() after write_eof()")
            raise RuntimeError("Cannot call write() before prepare()")
        data = self._with_head(data)
        if data:
            _send(writer, data)
            if writer.buffer_size > _DRAIN_PAST:
                writer.buffer_size = 0
                await writer.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        writer = self._payload_writer
        if writer is None:
            raise RuntimeError("Cannot call write_eof() before prepare()")
        body = self._wire_body
        if body is not None:
            self._wire_body = None
            data = body + data if data else body
        last = self._with_head(data)
        if last:
            _send(writer, last)
            await writer.drain()  # as StreamWriter.write_eof: the end waits for the socket
        # StreamResponse.write_eof's bookkeeping, which aiohttp reads after it.
        self._eof_sent = True
        self._req = None
        self._body_length = writer.output_size
        self._payload_writer = None


def _send(writer: AbstractStreamWriter, data: bytes | bytearray | memoryview) -> None:
    """StreamWriter._write: count the bytes, then hand them to the transport."""
    transport = writer.transport
    if transport is None or transport.is_closing():
        raise ClientConnectionResetError("Cannot write to closing transport")
    size = len(data)
    writer.buffer_size += size
    writer.output_size += size
    transport.write(data)
