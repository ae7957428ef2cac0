"""In-process counters that make the two delivery methods comparable. No I/O.

Served as JSON at `metrics.path` when configured (the demo's comparison panel and
`python -m proxy bench` read it). Counters are per process and never carry a key, token or
URL: only route names, delivery methods and numbers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class MethodStats:
    requests: int = 0
    bytes_sent: int = 0  # body bytes the proxy itself sent
    not_modified: int = 0  # 304s answered
    ttfb_total: float = 0.0  # seconds from request start to the first response byte
    ttfb_count: int = 0

    def as_dict(self) -> dict[str, Any]:
        mean = self.ttfb_total / self.ttfb_count if self.ttfb_count else None
        return {
            "requests": self.requests,
            "bytes_sent": self.bytes_sent,
            "not_modified": self.not_modified,
            "mean_ttfb_ms": round(mean * 1000, 3) if mean is not None else None,
        }


@dataclass
class Metrics:
    requests: int = 0
    s3_requests: int = 0  # calls the proxy made to S3 (HEAD/GET); presigning makes none
    cache_hits: int = 0  # streamed answers served from the in-memory object cache
    bytes_redirected: int = 0  # object bytes clients fetched from S3 instead (when known)
    statuses: Counter[int] = field(default_factory=Counter)
    by_delivery: dict[str, MethodStats] = field(default_factory=dict)

    def method(self, delivery: str) -> MethodStats:
        stats = self.by_delivery.get(delivery)
        if stats is None:
            stats = self.by_delivery[delivery] = MethodStats()
        return stats

    def record(self, delivery: str | None, status: int, body_bytes: int, ttfb: float) -> None:
        self.requests += 1
        self.statuses[status] += 1
        if delivery is None:
            return
        stats = self.method(delivery.rsplit(":", 1)[-1])  # "auto:stream" counts as stream
        stats.requests += 1
        stats.bytes_sent += body_bytes
        stats.ttfb_total += ttfb
        stats.ttfb_count += 1
        if status == 304:
            stats.not_modified += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "s3_requests": self.s3_requests,
            "cache_hits": self.cache_hits,
            "bytes_redirected": self.bytes_redirected,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "by_delivery": {k: v.as_dict() for k, v in sorted(self.by_delivery.items())},
        }
