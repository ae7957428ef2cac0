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
   serialized from it (rule 1's check included) instead of the kept bytes.

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
from typing import cast

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import must_be_empty_body, rfc822_formatted_time
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
    lines = []
    for name, value in fields.items():
        if _FORBIDDEN.search(name) is not None or _FORBIDDEN.search(value) is not None:
            raise ValueError(f"control character in the header field {name[:40]!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("utf-8", "ignore")


class WireHead:
    """The fixed fields of an answer, as given and as checked bytes. `cors`: the request's
    CORS fields it includes (the Gateway adds them to an answer whose head lacks them)."""

    __slots__ = ("cors", "fields", "lines", "typed", "view")

    def __init__(self, fields: Mapping[str, str], cors: Mapping[str, str] | None = None) -> None:
        view = CIMultiDictProxy(CIMultiDict(fields))
        taken = _PER_REQUEST.intersection(name.lower() for name in view)
        if taken:
            raise ValueError(f"{sorted(taken)} are written per request, not kept in a head")
        self.fields = view
        self.lines = header_lines(view)
        self.typed = "Content-Type" in view
        self.cors = cors


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""  # as aiohttp: an unknown status has an empty reason phrase
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason}\r\n".encode("ascii")
    return line


_date = ""
_date_line = b""


def _date_field() -> bytes:
    global _date, _date_line
    now = rfc822_formatted_time()  # aiohttp formats it once a second
    if now is not _date:
        _date, _date_line = now, f"Date: {now}\r\n".encode("ascii")
    return _date_line


class WireResponse(web.StreamResponse):
    """An answer of `length` body bytes whose head is `head` plus the lines rule 2 adds.
    `body`: the whole body, sent by write_eof (else the caller write()s it after prepare()).
    Set `request_id` and `age` before prepare()."""

    def __init__(self, status: int, head: WireHead, length: int, body: bytes | None = None) -> None:
        # The base keeps the head's read-only view as `_headers` (so the header properties
        # read it) until `headers` is first asked for: nothing is copied per answer.
        super().__init__(status=status, _real_headers=cast("CIMultiDict[str]", head.fields))
        self._head = head
        self._length = length
        self._wire_body = body
        self._edited: CIMultiDict[str] | None = None
        self._pending: bytes | None = None  # the serialized head, until it is written
        self._left = length  # body bytes still to send
        self.request_id: str | None = None
        self.age: int | None = None

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

    @property
    def content_length(self) -> int | None:
        return self._length

    @content_length.setter
    def content_length(self, value: int | None) -> None:
        raise RuntimeError("a WireResponse's length is given when it is made")

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        writer = self._payload_writer
        if writer is not None:
            return writer
        self._req = request
        writer = self._payload_writer = request._payload_writer
        status = self._status
        empty = self._must_be_empty_body = must_be_empty_body(request.method, status)
        keep_alive, connection = answer_framing(request, self._keep_alive)
        self._keep_alive = keep_alive
        head = self._head
        edited = self._edited
        lines = head.lines if edited is None else header_lines(edited)
        typed = head.typed if edited is None else "Content-Type" in edited
        length = self._length
        parts = [_status_line(status), lines]
        if status not in _NO_LENGTH:
            parts.append(b"Content-Length: %d\r\n" % length)
            if length and not typed and not empty:
                parts.append(b"Content-Type: application/octet-stream\r\n")
        if self.age is not None:
            parts.append(b"Age: %d\r\n" % self.age)
        request_id = self.request_id
        if request_id is not None:
            if _FORBIDDEN.search(request_id) is not None:
                raise ValueError("control character in the request id")
            parts.append(f"X-Request-Id: {request_id}\r\n".encode("utf-8", "ignore"))
        parts += (_date_field(), connection, b"\r\n")
        self._pending = b"".join(parts)
        if empty:
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
        if self._eof_sent:
            raise RuntimeError("Cannot call write() after write_eof()")
        if writer is None:
            raise RuntimeError("Cannot call write() before prepare()")
        data = self._with_head(data)
        if data:
            await writer.write(data)

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        if self._payload_writer is None:
            raise RuntimeError("Cannot call write_eof() before prepare()")
        body = self._wire_body
        if body is not None:
            self._wire_body = None
            data = body + data if data else body
        # StreamResponse.write_eof: the writer's write_eof (one write, then drain) and the
        # bookkeeping aiohttp reads after it (body_length, eof).
        await super().write_eof(bytes(self._with_head(data)))
