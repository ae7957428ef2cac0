"""A bounded, expiring in-process cache of object metadata (size, type, validators), and of
recent 404s, keyed by the whole ObjectRef (customer key included). No I/O."""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from .request import ObjectRef
from .ssec import CustomerKey
from .storage import ObjectMeta


class _Absent(enum.Enum):
    MISSING = "missing"


MISSING: Final = _Absent.MISSING  # what `get` answers for a key S3 recently said is not there


class MetadataCache:
    """LRU with a per-entry deadline; `max_entries=0` or `ttl=0` disables it, and
    `negative_ttl=0` disables remembering 404s.

    Expired entries are dropped when read, and on every `put` from the least recently used
    end for as long as they are expired there, so entries nobody asks for again do not sit
    out their time until the table is full.
    """

    def __init__(
        self, max_entries: int, ttl: float, negative_ttl: float, clock: Callable[[], float]
    ) -> None:
        self._max = max_entries
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._entries: OrderedDict[ObjectRef, tuple[float, ObjectMeta | _Absent]] = OrderedDict()
        self._customer_keys: set[CustomerKey | None] = set()  # as in ObjectCache: for `forget`
        self.hits = 0  # lookups answered and not (read by the metrics)
        self.misses = 0

    def get(self, ref: ObjectRef) -> ObjectMeta | _Absent | None:
        """The metadata, MISSING for a remembered 404, or None when not known."""
        entry = self._entries.get(ref)
        if entry is None:
            self.misses += 1
            return None
        deadline, meta = entry
        if self._clock() >= deadline:
            del self._entries[ref]
            self.misses += 1
            return None
        self._entries.move_to_end(ref)
        self.hits += 1
        return meta

    def put(self, ref: ObjectRef, meta: ObjectMeta) -> None:
        self._store(ref, meta, self._ttl)

    def put_missing(self, ref: ObjectRef) -> None:
        """S3 answered 404 for this object."""
        self._store(ref, MISSING, min(self._negative_ttl, self._ttl))

    def forget(self, ref: ObjectRef) -> None:
        """The object changed (this process stored it): the next lookup of its bucket and
        key asks S3, whichever customer key it comes with."""
        for sse in self._customer_keys:
            self._entries.pop(replace(ref, sse=sse), None)

    def _store(self, ref: ObjectRef, meta: ObjectMeta | _Absent, ttl: float) -> None:
        if self._max <= 0 or ttl <= 0:
            return
        now = self._clock()
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            if now < entries[oldest][0]:
                break
            del entries[oldest]
        entries[ref] = (now + ttl, meta)
        entries.move_to_end(ref)
        self._customer_keys.add(ref.sse)
        while len(entries) > self._max:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
