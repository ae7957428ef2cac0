"""One JSON line per request. Never logs a token, cookie, query string or URL signature."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger("proxy.access")


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
    reason: str | None = None
    token_source: str | None = None
    started: float = 0.0  # perf_counter() at arrival
    first_byte: float | None = None  # perf_counter() when the first body byte was written

    def emit(self, now: float, duration: float) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        line = {
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "route": self.route,
            "sub": self.sub,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "bytes": self.bytes_sent,
            "duration_ms": round(duration * 1000, 3),
            "delivery": self.delivery,
            "client": self.client,
        }
        if self.token_source:
            line["token_source"] = self.token_source
        if self.reason:
            line["reason"] = self.reason
        log.info(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
