"""What every state backend does the same way: the revocation check on a local copy, and
the choice between failing open and closed. No I/O.

Rule: the request path never waits on the backend for a revocation. Each process checks its
own copy (`RevocationList`), which the backend keeps current. When the backend cannot vouch
that the copy is current (Redis unreachable past the one-second bound), the copy is still
enforced for `state.outage_grace` seconds: nobody can revoke meanwhile (that needs Redis),
so the copy is as complete as it was when Redis went away. Past the grace the token is
refused with 503, or let through (on the copy) when `state.when_down.revocations` is `open`.

Rule: a revocation also reaches what is already running. A response that outlives its
admission (a stream) is `watch`ed with its claims; whenever entries are added to the copy
(here, or from another replica through the backend) the watched claims are checked once
more, in one sweep per batch of changes, and a covered one is told to stop. So the cost
falls on revocations, which are rare, and none on the bytes of a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import RateSettings, Settings
from ..errors import StateUnavailable, Unauthenticated
from ..limits import StreamSlots, TooManyRequests
from .revocations import LINK_MAX_LIFETIME, Kind, Revocation, RevocationList, lifetime_refusal

log = logging.getLogger("proxy.state")

Clock = Callable[[], float]


@dataclass(frozen=True)
class Bucket:
    """One rate-limit bucket to spend a token from: `key` names it, `what` the refusal."""

    key: tuple[str, ...]
    rate: RateSettings
    what: str


_LIFETIMES_KEPT = 4096

# Buckets spent in order, stopping at the first that refuses (a client over its limit does
# not also spend its subject's tokens); one group per path of a sign API batch.
BucketGroup = Sequence[Bucket]


@dataclass
class StreamLease:
    """A stream slot held by one response; handed back to `release_stream`."""

    client: str
    subject: str | None
    shared: str | None = None  # the slot's member name in Redis, when it holds one there


@dataclass(eq=False)
class Watch:
    """A response in flight for a token or share link; `stop` ends it if that is revoked."""

    claims: Mapping[str, Any]
    link: bool
    stop: Callable[[], None]  # must not raise or block: it closes a connection


@dataclass
class Counters:
    """How often the backend failed and what was let through or refused because of it."""

    errors: int = 0
    limits_let_through: int = 0
    limits_refused: int = 0
    revocations_unconfirmed: int = 0  # checked on a copy not confirmed, inside the grace
    revocations_let_through: int = 0  # past the grace, when_down.revocations: open
    revocations_refused: int = 0  # past the grace, closed (503)
    restores: int = 0  # times the backend was found to have lost revocations
    restored: int = 0  # revocations this process wrote back to it
    by_reason: dict[str, int] = field(default_factory=dict)


class State:
    """Revocations, rate limits and stream caps, for one process or shared by many."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self._clock = clock
        self.revoked = RevocationList(on_added=self._revocations_added)
        self.counters = Counters()
        self._watches: set[Watch] = set()
        self._sweep_due = False
        # id(claims) -> (those claims, the longest lifetime judged against, the verdict)
        self._lifetimes: dict[int, tuple[Mapping[str, Any], float, str | None]] = {}
        limits = settings.limits
        self.streams = StreamSlots(
            limits.max_streams, limits.max_streams_per_client, limits.max_streams_per_subject
        )
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        """Take a reloaded config's settings. The backend itself (state.backend, url, ...)
        stays as it was opened: changing it needs a restart."""
        self._max_lifetime = settings.revocation.max_token_lifetime
        self._revocations_closed = settings.state.when_down.revocations == "closed"
        self._outage_grace = settings.state.outage_grace
        self._limits_closed = settings.state.when_down.limits == "closed"
        limits = settings.limits
        self.streams.limit = limits.max_streams
        self.streams.per_client = limits.max_streams_per_client
        self.streams.per_subject = limits.max_streams_per_subject

    # --- requests ------------------------------------------------------------------------

    def check_token(self, claims: Mapping[str, Any], link: bool = False) -> None:
        """Refuse a revoked token or link (401), or one that outlives revocations."""
        longest = LINK_MAX_LIFETIME if link else self._max_lifetime
        # A token's lifetime verdict is a function of its claims (which the verifier hands
        # out, the same object per cached token, never modified) and `longest` only: settled
        # once per claims object, not per request. The entry holds (pins) the claims it was
        # made from, so their id is not reused while it lives, and it answers only that very
        # object under the same `longest` (after a reload's new max_token_lifetime, judged
        # afresh). A link's claims are new on each request: nothing to remember.
        remembered = None if link else self._lifetimes.get(id(claims))
        if remembered is not None and remembered[0] is claims and remembered[1] == longest:
            refusal = remembered[2]
        else:
            refusal = lifetime_refusal(claims, longest)
            if not link:
                if len(self._lifetimes) >= _LIFETIMES_KEPT:
                    self._lifetimes.clear()  # bounded: many tokens only cost recomputing
                self._lifetimes[id(claims)] = (claims, longest, refusal)
        if refusal is not None:
            raise Unauthenticated(refusal, invalid_token=True)
        stale = self.stale_for()
        if stale is not None:
            if stale <= self._outage_grace:
                self.counters.revocations_unconfirmed += 1
            elif self._revocations_closed:
                self.counters.revocations_refused += 1
                raise StateUnavailable(
                    f"revocations not confirmed for {stale:.1f} s (past state.outage_grace)"
                )
            else:
                self.counters.revocations_let_through += 1
        if self.revoked.covers(claims, self._clock(), link):
            raise Unauthenticated("token revoked", invalid_token=True, description="token revoked")

    def watch(
        self, claims: Mapping[str, Any], stop: Callable[[], None], link: bool = False
    ) -> Watch:
        """Have `stop` called once if these claims are revoked before `unwatch`."""
        watch = Watch(claims, link, stop)
        self._watches.add(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        self._watches.discard(watch)

    def _revocations_added(self) -> None:
        if not self._watches or self._sweep_due:
            return
        self._sweep_due = True
        try:
            # After the batch being applied (a poll may add many entries): one sweep.
            asyncio.get_running_loop().call_soon(self._sweep)
        except RuntimeError:  # no loop (a tool, a test): at once
            self._sweep()

    def _sweep(self) -> None:
        self._sweep_due = False
        now = self._clock()
        for watch in [w for w in self._watches if self.revoked.covers(w.claims, now, w.link)]:
            self._watches.discard(watch)
            try:
                watch.stop()
            except Exception:  # one response's failure to stop must not spare the others
                log.exception("stopping a revoked response failed")

    def stale_for(self) -> float | None:
        """Seconds the local copy has not been confirmed current, past the bound; else None."""
        return None

    def past_grace(self) -> bool:
        """True when tokens are no longer checked on the copy alone (see the module rule)."""
        stale = self.stale_for()
        return stale is not None and stale > self._outage_grace

    def is_up(self) -> bool:
        """Whether the backend answered its last call (always, in memory)."""
        return True

    async def take(self, groups: Sequence[BucketGroup]) -> list[TooManyRequests | None]:
        """Spend one token per bucket, group by group: each group's refusal, or None."""
        raise NotImplementedError

    async def acquire_stream(self, client: str, subject: str | None) -> StreamLease:
        """A slot for one streamed response (503 past limits.max_streams, 429 past the per
        client or per subject caps)."""
        raise NotImplementedError

    async def release_stream(self, lease: StreamLease) -> None:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def s3_slot(self, client: str, subject: str | None) -> AsyncIterator[StreamLease]:
        """One of the caller's slots, held for an S3 request made on its behalf that is not
        a stream (a metadata HEAD, an upload's absence check): each holds a pooled S3
        connection as long as S3 takes to answer, so it counts against the same caps."""
        lease = await self.acquire_stream(client, subject)
        try:
            yield lease
        finally:
            await self.release_stream(lease)

    # --- administration ------------------------------------------------------------------

    async def revoke(self, entry: Revocation) -> None:
        raise NotImplementedError

    async def unrevoke(self, kind: Kind, value: str, iss: str | None) -> bool:
        raise NotImplementedError

    async def revocations(self) -> list[Revocation]:
        raise NotImplementedError

    async def check(self) -> str | None:
        """For readiness: what keeps this process from serving, or None."""
        return None

    def degraded(self) -> str | None:
        """For readiness: what is wrong while the process still serves, or None."""
        return None

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # --- for backends --------------------------------------------------------------------

    def _limits_down(self, reason: str) -> TooManyRequests | None:
        """The answer for a rate limit or stream cap the backend could not check."""
        self._failed(reason)
        if self._limits_closed:
            self.counters.limits_refused += 1
            raise StateUnavailable(f"limits not checked: {reason}")
        self.counters.limits_let_through += 1
        return None

    def _failed(self, reason: str) -> None:
        self.counters.errors += 1
        self.counters.by_reason[reason] = self.counters.by_reason.get(reason, 0) + 1


def monotonic() -> float:
    return time.monotonic()
