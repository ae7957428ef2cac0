"""In-process rate limits (token buckets) and the concurrent-stream caps. No I/O.

These are the `state.backend: memory` implementations (proxy/state/memory.py): per
process, so with N workers or replicas the effective limit is N times the configured one;
proxy/state/redisstate.py shares them. Idle buckets are forgotten first when the table is
full, so memory stays bounded however many clients come and go.
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
        self.max_buckets = max_buckets
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
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)


class StreamSlots:
    """Counts streamed responses in flight, in all and per client address and token subject;
    refuses new ones past a cap.

    Each stream holds an S3 connection for as long as its client reads, so without the
    per-client and per-subject caps one client with slow readers could hold the whole pool.
    Past those caps the answer is 429, not 503: the refusal is about this caller's own
    concurrency (RFC 6585's "too many requests"), everyone else is still served, and a
    client or intermediary that backs off on 429 backs off only that caller. Past the
    process-wide cap the proxy itself is full: 503. Counters of callers with nothing in
    flight are deleted, so the tables never hold more than `limit` entries.
    """

    def __init__(self, limit: int, per_client: int, per_subject: int) -> None:
        self.limit = limit
        self.per_client = per_client
        self.per_subject = per_subject
        self.in_use = 0
        self._clients: dict[str, int] = {}
        self._subjects: dict[str, int] = {}

    def acquire(self, client: str, subject: str | None) -> None:
        """Take a slot for one stream by `client` (an address) for `subject` (None without a
        token); release it with the same arguments."""
        if self.in_use >= self.limit:
            raise Overloaded(f"{self.in_use} streams in flight (limits.max_streams)")
        if self._clients.get(client, 0) >= self.per_client:
            # Retry-After 1: a slot frees when one of the caller's own streams ends.
            raise TooManyRequests("streams per client (limits.max_streams_per_client)", 1)
        if subject is not None and self._subjects.get(subject, 0) >= self.per_subject:
            raise TooManyRequests("streams per subject (limits.max_streams_per_subject)", 1)
        self.in_use += 1
        self._clients[client] = self._clients.get(client, 0) + 1
        if subject is not None:
            self._subjects[subject] = self._subjects.get(subject, 0) + 1

    def release(self, client: str, subject: str | None) -> None:
        self.in_use -= 1
        _decrement(self._clients, client)
        if subject is not None:
            _decrement(self._subjects, subject)


def _decrement(counts: dict[str, int], name: str) -> None:
    left = counts.get(name, 0) - 1
    if left > 0:
        counts[name] = left
    else:
        counts.pop(name, None)
