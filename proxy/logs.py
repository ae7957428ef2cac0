"""Logging set-up for `serve`, with a last line of defence that redacts secrets.

Two streams, each one JSON object per line: stdout carries the access log (and the audit
trail with `audit.path: "-"`), stderr the diagnostics (start-up, warnings, reload results,
Redis or S3 trouble), so a collector can parse either without guessing.

The proxy's own log lines never carry tokens, cookies or signatures; but libraries log too
(aiohttp logs the raw request line, query string included, when it rejects a malformed
request). Every record passes through RedactSecrets before it is written.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from typing import Any, TextIO

import orjson

from .accesslog import LineWriter, timestamp, write_lines_to

_PATTERNS = (
    # JWTs (access tokens, share links) wherever they appear
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "<redacted-jwt>"),
    # presigned URL secrets and common token parameters
    (
        re.compile(
            r"(?i)\b(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|token|link|"
            r"access_token|id_token)=([^&\s\"'<>\]]+)"
        ),
        r"\1=<redacted>",
    ),
    # header dumps
    (
        re.compile(r"(?i)\b(authorization|cookie|set-cookie)(\"?\s*[:=]\s*)[^\r\n,}]*"),
        r"\1\2<redacted>",
    ),
)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "proxy.access":
            return True  # built by the proxy from fields that never hold secrets
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self._formatter.formatException(record.exc_info))
        return True


def diagnostic_line(level: str, logger: str, message: str, **fields: Any) -> str:
    """One diagnostic as the JSON line stderr carries: time, level, logger, message, extras."""
    line = {
        "time": timestamp(time.time()),
        "level": level,
        "logger": logger,
        "message": message,
        **fields,
    }
    return orjson.dumps(line).decode()


def write_diagnostic(level: str, message: str, logger: str = "proxy", **fields: Any) -> None:
    """Write one diagnostic line to stderr now, whatever the log level (the start-up line
    that says where the proxy listens; why it could not start)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(diagnostic_line(level, logger, redact(message), **fields) + "\n")
        sys.stderr.flush()


class JsonLines(logging.Formatter):
    """A log record as one diagnostic line; a traceback goes in `exception`, as one string."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exception"] = record.exc_text
        return diagnostic_line(record.levelname.lower(), record.name, record.getMessage(), **fields)


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that does not flush after every line: under load, one write system
    call per request costs more than the rest of the access log. Warnings and errors are
    flushed at once; `flush_due()` (called periodically by the server) does the rest."""

    interval = 0.5

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._flushed_at = time.monotonic()

    def flush(self) -> None:  # called by emit(): flush only when due
        self.flush_due()

    def flush_due(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._flushed_at >= self.interval:
            self._flushed_at = now
            with contextlib.suppress(OSError, ValueError):  # a broken stdout fails nothing
                super().flush()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.levelno >= logging.WARNING:
            self.flush_due(force=True)

    def close(self) -> None:
        self.flush_due(force=True)
        super().close()


_access_writer: LineWriter | None = None


def flush_logs() -> None:
    if _access_writer is not None:
        _access_writer.flush()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, BatchingStreamHandler):
            handler.flush_due(force=True)


def configure_logging(level: str) -> None:
    """JSON access lines on stdout, JSON diagnostics on stderr, everything redacted. botocore
    stays at WARNING even in DEBUG runs: its debug output includes signed request headers."""
    stderr = BatchingStreamHandler(sys.stderr)
    stderr.setFormatter(JsonLines())
    logging.basicConfig(level=level, handlers=[stderr])
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
    quiet_noisy_libraries()
    global _access_writer
    if logging.getLogger("proxy.access").isEnabledFor(logging.INFO):
        _access_writer = LineWriter(sys.stdout, BatchingStreamHandler.interval)
        write_lines_to(_access_writer)


def quiet_noisy_libraries() -> None:
    for noisy in ("botocore", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
