"""In-process rate limits (token buckets) and the concurrent-stream cap. No I/O.

Buckets are per process: with N workers or replicas, the effective limit is N times the
configured one. Idle buckets are forgotten first when the table is full, so memory stays
bounded however many clients come and go.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from .config import RateSettings
from .errors import ProxyError


class TooManyRequests(ProxyError):
    status = 429
    detail = "too many requests"

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class Overloaded(ProxyError):
    status = 503
    detail = "busy, try again"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, headers={"Retry-After": "1"})


class RateLimiter:
    def __init__(self, clock: Callable[[], float], max_buckets: int) -> None:
        self._clock = clock
        self._max = max_buckets
        # key -> (tokens, last refill time)
        self._buckets: OrderedDict[tuple[str, ...], tuple[float, float]] = OrderedDict()

    def take(self, key: tuple[str, ...], settings: RateSettings, what: str) -> None:
        """Spend one token from `key`'s bucket, or raise TooManyRequests with Retry-After."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (float(settings.burst), now))
        tokens = min(float(settings.burst), tokens + (now - last) * settings.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            raise TooManyRequests(f"rate limit per {what}", (1 - tokens) / settings.rate)
        self._buckets[key] = (tokens - 1, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)


class StreamSlots:
    """Counts streamed responses in flight; refuses new ones past the cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def acquire(self) -> None:
        if self.in_use >= self.limit:
            raise Overloaded(f"{self.in_use} streams in flight (limits.max_streams)")
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
