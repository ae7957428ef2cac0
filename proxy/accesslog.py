"""One JSON line per request. Never logs a token, cookie, query string or URL signature."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

import orjson

log = logging.getLogger("proxy.access")
_second: tuple[int, str] = (-1, "")


def _encode(line: Mapping[str, object]) -> str:
    # orjson: a tenth of the json module's time, and one line per request adds up.
    return orjson.dumps(line).decode()


class LineWriter:
    """Writes access lines straight to a stream, bypassing the logging module (whose
    records, locks and handlers cost more per request than the rest of the log). Lines are
    buffered and written at most every `interval` seconds (and by `flush()`)."""

    def __init__(self, stream: TextIO, interval: float = 0.5) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._interval = interval
        self._due = time.monotonic() + interval
        self._broken = False

    def __call__(self, line: str) -> None:
        self._lines.append(line)
        now = time.monotonic()
        if now >= self._due or len(self._lines) >= 512:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        self._due = (now or time.monotonic()) + self._interval
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            # A broken stdout must not fail requests; say so once and drop the lines.
            if not self._broken:
                self._broken = True
                with contextlib.suppress(Exception):
                    logging.getLogger("proxy").error(
                        "access log: stdout is not writable; lines dropped"
                    )


# Where lines go: the logging module by default (tests capture it), a LineWriter in `serve`.
_sink: Callable[[str], None] | None = None


def write_lines_to(sink: Callable[[str], None] | None) -> None:
    global _sink
    _sink = sink


def timestamp(now: float) -> str:
    """ISO 8601 with milliseconds; the date-time part is formatted once per second."""
    global _second
    whole = int(now)
    if _second[0] != whole:
        _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{int((now - whole) * 1000):03d}+00:00"


@dataclass
class AccessRecord:
    """Filled in as the request flows; written once when it ends."""

    method: str
    path: str  # the raw path without its query string
    client: str | None
    route: str | None = None
    sub: str | None = None
    delivery: str | None = None
    status: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0  # an upload's body, as stored
    reason: str | None = None
    token_source: str | None = None
    started: float = 0.0  # perf_counter() at arrival
    first_byte: float | None = None  # perf_counter() when the first body byte was written
    cors: dict[str, str] | None = None  # CORS headers every response must carry; not logged

    def emit(self, now: float, duration: float) -> None:
        if _sink is None and not log.isEnabledFor(logging.INFO):
            return
        line = {
            "time": timestamp(now),
            "route": self.route,
            "sub": self.sub,
            "method": self.method,
            "path": self.path[:2048],  # a log line stays bounded
            "status": self.status,
            "bytes": self.bytes_sent,
            "duration_ms": round(duration * 1000, 3),
            "delivery": self.delivery,
            "client": self.client,
        }
        if self.bytes_received:
            line["bytes_received"] = self.bytes_received
        if self.token_source:
            line["token_source"] = self.token_source
        if self.reason:
            line["reason"] = self.reason
        if _sink is not None:
            _sink(_encode(line))
        else:
            log.info(_encode(line))
