"""Request-line versions, seen before aiohttp's parser reads them; no I/O, never any other byte.

aiohttp's C parser (llhttp) knows HTTP/0.9, 1.0, 1.1 and 2.0 and refuses every other version
as a malformed line (400). RFC 9110 2.5 asks more of a server: a message of a major version it
implements, with a higher minor version, is handled as the highest minor it knows (HTTP/1.2 as
HTTP/1.1), and a major version it does not implement is answered 505. The connection hands
every read to `RequestLines.feed` before the parser; its rules:

1. Only a request line known to begin a request is looked at: the first on a connection; one
   after `between_messages()` (the connection says a read ended exactly at the end of a
   message); and one after a head in the same read that cannot have a body. Everything else
   (header lines, bodies, a request pipelined behind a body in the same read) goes through
   byte for byte: a body is never rewritten. Such a request line keeps llhttp's answer (400
   for HTTP/1.2).
2. `HTTP/1.x` with x over 1 becomes `HTTP/1.1`: the same length, so nothing else moves.
3. A major version over 1 is left for the parser and noted (`unsupported_major`): the
   connection then answers the parser's refusal with 505 (HTTP/2.0, which llhttp parses,
   reaches the edge's head check, which answers 505 too).
4. Of a request line whose end has not arrived, the parser gets all but what could be the
   start of its version (at most ` HTTP/d.d` and a CR, held back until the rest arrives), so
   a version split across reads is still seen whole, and anything else (a long target, a TLS
   handshake) reaches the parser at once.
"""

from __future__ import annotations

import re

# The version at the end of a request line (its CR, if any, still on): ` HTTP/d.d`.
_VERSION = re.compile(rb" HTTP/([0-9])\.([0-9])\r?\Z")
_USUAL = b" HTTP/1.1\r"  # (a shortcut: nearly every request line ends so)
_LINE_ENDS = (b"\r", b"\n")
# What may be the start of that version at the end of a line that has not ended yet.
_VERSION_START = re.compile(rb" (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.(?:[0-9]\r?)?)?)?)?)?)?)?)?\Z")
# Fields that could give a head a body or switch protocols: no request line is looked for
# after a head that names one (in any case, anywhere in the head, to err on the safe side).
_FRAMING = (b"content-length", b"transfer-encoding", b"upgrade")
_AT_LINE, _IN_LINE, _ELSEWHERE = "at line", "in line", "elsewhere"


class RequestLines:
    """One connection's request lines (rules 1-4)."""

    __slots__ = ("_held", "_state", "unsupported_major")

    def __init__(self) -> None:
        self._state = _AT_LINE  # a connection begins with a request line
        self._held = b""
        self.unsupported_major = False

    def feed(self, data: bytes) -> bytes:
        """What to hand the parser now, of what has arrived (rule 4 may keep some back)."""
        if self._state is _ELSEWHERE:
            return data
        if self._held:
            data, self._held = self._held + data, b""
        out: list[bytes] = []
        copied = 0  # data[:copied] is in `out`
        start = 0  # where the next request line (or the rest of one) begins
        in_line = self._state is _IN_LINE
        while True:
            line_start = start
            if not in_line and data[start : start + 1] in _LINE_ENDS:
                line_start = _after_empty_lines(data, start)
            if line_start == len(data):
                self._state = _IN_LINE if in_line else _AT_LINE
                break
            end = data.find(b"\n", line_start)
            if end < 0:
                # The parser may have the line so far, but not what could begin its version.
                version_start = _VERSION_START.search(data, line_start)
                if version_start is not None:
                    self._held, data = data[version_start.start() :], data[: version_start.start()]
                self._state = _IN_LINE
                break
            in_line = False
            line = data[line_start:end]
            versioned = self._versioned(line)
            if versioned is not line:
                out += (data[copied:line_start], versioned)
                copied = end
            # Rule 1 within one read: after a head that ends here and cannot have a body
            # (no field that could frame one, or switch protocols), a request line follows.
            # (A head that ends the read is left to the connection, which knows if it has a
            # body: the common case then costs no look at its fields.)
            head_end = data.find(b"\r\n\r\n", end - 1)
            start = head_end + 4
            if head_end < 0 or start == len(data) or _may_have_body(data[end:head_end]):
                self._state = _ELSEWHERE
                break
        if not out:
            return data
        out.append(data[copied:])
        return b"".join(out)

    def between_messages(self) -> None:
        """The parser has read a whole message and nothing of the next: what comes next
        begins a request line."""
        if self._state is _ELSEWHERE:
            self._state = _AT_LINE

    def lost_track(self) -> None:
        """Where the next request line begins is unknown: look at none until told again."""
        if self._state is not _IN_LINE:
            self._state = _ELSEWHERE

    def _versioned(self, line: bytes) -> bytes:
        if line.endswith(_USUAL):
            return line
        found = _VERSION.search(line)
        if found is None:
            return line  # no version (HTTP/0.9) or a malformed one: the parser's to refuse
        major, minor = int(found[1]), int(found[2])
        if major == 1 and minor > 1:
            return line[: found.start(2)] + b"1" + line[found.end(2) :]  # rule 2
        if major > 1:
            self.unsupported_major = True  # rule 3
        return line


def _may_have_body(fields: bytes) -> bool:
    fields = fields.lower()
    return any(name in fields for name in _FRAMING)


def _after_empty_lines(data: bytes, start: int) -> int:
    """The offset past any empty lines (CRLF or a bare LF) from `start` in `data`."""
    while True:
        if data.startswith(b"\r\n", start):
            start += 2
        elif data.startswith(b"\n", start):
            start += 1
        else:
            return start
