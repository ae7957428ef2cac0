"""A bounded, expiring in-process cache of object metadata (size, type, validators). No I/O."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from .storage import ObjectMeta


class MetadataCache:
    """LRU with a per-entry deadline; `max_entries=0` or `ttl=0` disables it."""

    def __init__(self, max_entries: int, ttl: float, clock: Callable[[], float]) -> None:
        self._max = max_entries
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, ObjectMeta]] = OrderedDict()
        self.hits = 0  # lookups answered and not (read by the metrics)
        self.misses = 0

    def get(self, bucket: str, key: str) -> ObjectMeta | None:
        entry = self._entries.get((bucket, key))
        if entry is None:
            self.misses += 1
            return None
        deadline, meta = entry
        if self._clock() >= deadline:
            del self._entries[(bucket, key)]
            self.misses += 1
            return None
        self._entries.move_to_end((bucket, key))
        self.hits += 1
        return meta

    def put(self, bucket: str, key: str, meta: ObjectMeta) -> None:
        if self._max <= 0 or self._ttl <= 0:
            return
        self._entries[(bucket, key)] = (self._clock() + self._ttl, meta)
        self._entries.move_to_end((bucket, key))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
