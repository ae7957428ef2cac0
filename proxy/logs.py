"""Logging set-up for `serve`, with a last line of defence that redacts secrets.

The proxy's own log lines never carry tokens, cookies or signatures; but libraries log too
(aiohttp logs the raw request line, query string included, when it rejects a malformed
request). Every record passes through RedactSecrets before it is written.
"""

from __future__ import annotations

import logging
import re
import sys

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
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self._formatter.formatException(record.exc_info))
        return True


def configure_logging(level: str) -> None:
    """JSON access lines on stdout, everything redacted. botocore stays at WARNING even in
    DEBUG runs: its debug output includes signed request headers."""
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
    quiet_noisy_libraries()


def quiet_noisy_libraries() -> None:
    for noisy in ("botocore", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
