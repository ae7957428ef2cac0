"""One JSON line per request, read from its RequestContext. Never logs a token, cookie, query
string or URL signature."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TextIO

import orjson

from .request import RequestContext

log = logging.getLogger("proxy.access")
_second: tuple[int, str] = (-1, "")
_monotonic = time.monotonic
# A timestamp's end, by its milliseconds: indexed, not formatted, per line (1000: what a
# float's rounding can give just below the next second, formatted as ever).
_MILLIS = [f".{ms:03d}+00:00" for ms in range(1001)]
_dumps = orjson.dumps


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
        lines = self._lines
        lines.append(line)
        now = _monotonic()
        if now >= self._due or len(lines) >= 512:
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
    whole = int(now)
    second = _second if _second[0] == whole else _new_second(whole)
    return second[1] + _MILLIS[int((now - whole) * 1000)]


def _new_second(whole: int) -> tuple[int, str]:
    global _second
    _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return _second


def write_access_line(context: RequestContext, now: float, duration: float) -> None:
    """The request's one line, once it has ended."""
    sink = _sink
    if sink is None and not log.isEnabledFor(logging.INFO):
        return
    # timestamp(now), inline: a call per request costs more than the field's formatting.
    whole = int(now)
    second = _second if _second[0] == whole else _new_second(whole)
    line = {
        "time": second[1] + _MILLIS[int((now - whole) * 1000)],
        "request_id": context.id,  # as in X-Request-Id and the request's audit events
        "route": context.route,
        "sub": context.sub,
        "method": context.method,
        "path": context.path[:2048],  # a log line stays bounded
        "status": context.status,
        "bytes": context.bytes_sent,
        # (Rounded to the microsecond as an integer, then scaled: round(x, 3) on a float
        # formats it in decimal first, and costs more than the rest of this line's fields.)
        "duration_ms": round(duration * 1_000_000) / 1000,
        "delivery": context.delivery,
        "client": context.client,
    }
    if context.bytes_received:
        line["bytes_received"] = context.bytes_received
    if context.token_source:
        line["token_source"] = context.token_source
    if context.reason:
        line["reason"] = context.reason
    if sink is not None:
        sink(_dumps(line).decode())  # _encode, inline
    else:
        log.info(_encode(line))
