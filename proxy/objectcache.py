"""A bounded in-process cache of small, hot objects, with per-route freshness. No I/O.

Only routes with `cache:` use it. Within `max_age` seconds of fetching an object, repeat
requests are answered from memory (authorization is still checked on every request); S3 is
asked again after that. The budget is what entries really hold, not just their bodies: each
counts its body, bucket and key plus ENTRY_OVERHEAD, so many empty objects with long keys
cannot grow memory at "0 bytes". Entries are dropped least-recently-used first to stay within
`object_cache.max_bytes` and `object_cache.max_entries`, and once older than the largest
`max_age` of any route (no route can serve them) as soon as they are seen: when read, or on
every `put` from the least recently used end. Entries are keyed by the whole ObjectRef: a body
read with one customer key is never an answer for another key, or for none.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from .request import ObjectRef
from .ssec import CustomerKey
from .storage import ObjectMeta

# Bytes an entry costs beyond its body, bucket and key: measured with tracemalloc at about
# 500 (the metadata with its header strings ~230; the entry, key tuple and dict slot ~270).
ENTRY_OVERHEAD = 512


@dataclass(frozen=True)
class CachedObject:
    meta: ObjectMeta
    body: bytes
    fetched_at: float
    cost: int  # what it counts against max_bytes


class ObjectCache:
    def __init__(
        self, max_bytes: int, max_entries: int, max_age: float, clock: Callable[[], float]
    ) -> None:
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._max_age = max_age  # the largest any route allows: older entries are garbage
        self._clock = clock
        self._bytes = 0
        self._entries: OrderedDict[ObjectRef, CachedObject] = OrderedDict()
        # Every customer key an entry was stored under (a handful, from the config): what
        # `forget` needs to drop each copy of one bucket and key.
        self._customer_keys: set[CustomerKey | None] = set()
        self.hits = 0  # lookups answered and not (read by the metrics)
        self.misses = 0

    @property
    def max_age(self) -> float:
        return self._max_age

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, ref: ObjectRef, max_age: float) -> CachedObject | None:
        """The entry if it was fetched less than `max_age` (the reading route's) ago."""
        entry = self._entries.get(ref)
        if entry is None:
            self.misses += 1
            return None
        age = self._clock() - entry.fetched_at
        if age >= self._max_age:
            self._drop(ref)
            self.misses += 1
            return None
        if age >= max_age:
            self.misses += 1
            return None
        self._entries.move_to_end(ref)
        self.hits += 1
        return entry

    def age(self, entry: CachedObject) -> int:
        """Whole seconds since `entry` was fetched from S3: the Age an answer from it carries
        (RFC 9111 5.1)."""
        return max(0, int(self._clock() - entry.fetched_at))

    def put(self, ref: ObjectRef, meta: ObjectMeta, body: bytes) -> None:
        cost = len(body) + len(ref.bucket) + len(ref.key) + ENTRY_OVERHEAD
        if cost > self._max_bytes or self._max_entries <= 0:
            return
        now = self._clock()
        self._drop(ref)
        self._drop_expired(now)
        self._entries[ref] = CachedObject(meta, body, now, cost)
        self._customer_keys.add(ref.sse)
        self._bytes += cost
        while self._bytes > self._max_bytes or len(self._entries) > self._max_entries:
            self._drop(next(iter(self._entries)))

    def forget(self, ref: ObjectRef) -> None:
        """The object changed (this process stored it): drop every copy of its bucket and
        key, whichever customer key read it."""
        for sse in self._customer_keys:
            self._drop(replace(ref, sse=sse))

    def _drop_expired(self, now: float) -> None:
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            if now - entries[oldest].fetched_at < self._max_age:
                return
            self._drop(oldest)

    def _drop(self, name: ObjectRef) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._bytes -= entry.cost
