"""State for one process (`state.backend: memory`): everything in this process's memory.

With several workers or replicas each keeps its own: rate limits are per process (N
processes allow N times the rate), and a revocation reaches only the process it was made
in (so `python -m proxy revoke` talks to the server's admin endpoint). No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Settings
from ..limits import RateLimiter, TooManyRequests
from .base import BucketGroup, Clock, State, StreamLease
from .revocations import Kind, Revocation


class MemoryState(State):
    def __init__(self, settings: Settings, clock: Clock) -> None:
        super().__init__(settings, clock)
        self._rates = RateLimiter(clock, settings.limits.max_tracked_clients)

    def reconfigure(self, settings: Settings) -> None:
        super().reconfigure(settings)
        if hasattr(self, "_rates"):
            # Buckets carry on (they clamp to a new burst); only the table's bound changes.
            self._rates.max_buckets = settings.limits.max_tracked_clients

    async def take(self, groups: Sequence[BucketGroup]) -> list[TooManyRequests | None]:
        refusals: list[TooManyRequests | None] = []
        for group in groups:
            refusal = None
            try:
                for bucket in group:
                    self._rates.take(bucket.key, bucket.rate, bucket.what)
            except TooManyRequests as exc:
                refusal = exc
            refusals.append(refusal)
        return refusals

    async def acquire_stream(self, client: str, subject: str | None) -> StreamLease:
        self.streams.acquire(client, subject)
        return StreamLease(client, subject)

    async def release_stream(self, lease: StreamLease) -> None:
        self.streams.release(lease.client, lease.subject)

    async def revoke(self, entry: Revocation) -> None:
        self.revoked.add(entry)

    async def unrevoke(self, kind: Kind, value: str, iss: str | None) -> bool:
        return self.revoked.remove(kind, value, iss)

    async def revocations(self) -> list[Revocation]:
        return self.revoked.entries(self._clock())
