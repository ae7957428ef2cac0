"""A bounded in-process cache of small, hot objects, with per-route freshness. No I/O.

Only routes with `cache:` use it. Within `max_age` seconds of fetching an object, repeat
requests are answered from memory (authorization is still checked on every request); S3 is
asked again after that. Entries are dropped least-recently-used first to stay within
`object_cache.max_bytes`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .storage import ObjectMeta


@dataclass(frozen=True)
class CachedObject:
    meta: ObjectMeta
    body: bytes
    fetched_at: float


class ObjectCache:
    def __init__(self, max_bytes: int, clock: Callable[[], float]) -> None:
        self._max_bytes = max_bytes
        self._clock = clock
        self._bytes = 0
        self._entries: OrderedDict[tuple[str, str], CachedObject] = OrderedDict()
        self.hits = 0  # lookups answered and not (read by the metrics)
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, bucket: str, key: str, max_age: float) -> CachedObject | None:
        """The entry if it was fetched less than `max_age` (the reading route's) ago."""
        entry = self._entries.get((bucket, key))
        if entry is None or self._clock() - entry.fetched_at >= max_age:
            self.misses += 1
            return None
        self._entries.move_to_end((bucket, key))
        self.hits += 1
        return entry

    def put(self, bucket: str, key: str, meta: ObjectMeta, body: bytes) -> None:
        if len(body) > self._max_bytes:
            return
        self._drop((bucket, key))
        self._entries[(bucket, key)] = CachedObject(meta, body, self._clock())
        self._bytes += len(body)
        while self._bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    def _drop(self, name: tuple[str, str]) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._bytes -= len(entry.body)
