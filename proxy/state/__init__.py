"""Revocations, rate limits and stream caps: in this process, or shared through Redis.

The one face of the package: `create_state(settings)` gives the backend the config names
(`state.backend`), a `State`. The Gateway opens it once and keeps it across handler swaps
(config reloads), so the Redis pool, its poller and the slots held survive them.
"""

from __future__ import annotations

import time

from ..config import Settings
from .base import Bucket, BucketGroup, Clock, Counters, State, StreamLease, Watch
from .memory import MemoryState
from .revocations import (
    LINK_MAX_LIFETIME,
    Kind,
    Revocation,
    RevocationList,
    entry_id,
    new_revocation,
)

__all__ = [
    "LINK_MAX_LIFETIME",
    "Bucket",
    "BucketGroup",
    "Counters",
    "Kind",
    "MemoryState",
    "Revocation",
    "RevocationList",
    "State",
    "StreamLease",
    "Watch",
    "create_state",
    "entry_id",
    "new_revocation",
]


def create_state(settings: Settings, clock: Clock = time.time) -> State:
    if settings.state.backend == "redis":
        # Imported here: the memory backend does not need the redis package loaded.
        from .redisstate import RedisState

        return RedisState(settings, clock)
    return MemoryState(settings, clock)
