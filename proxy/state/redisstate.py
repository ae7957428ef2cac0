"""State shared by every worker and replica through one Redis (`state.backend: redis`).

Rules:
1. No request waits on Redis longer than `state.timeout`: every call runs under that
   deadline, the pool is a blocking one with the same wait, and redis-py retries nothing.
2. Revocations cost no round trip per request. Each process keeps a copy, loaded whole once
   and then kept current from a change log (a Redis stream) polled every POLL_INTERVAL: a
   poll with nothing new is one small round trip, and a revocation made on sign-out costs
   every replica one entry, not a reload of the whole list. Each change carries a sequence
   number. A copy not confirmed for STALE_AFTER is trusted for `state.outage_grace` more
   (see base.py); then `when_down.revocations` decides (refuse, by default).
3. Redis that forgets does not take revocations with it. An epoch marker, set by the first
   process to find none, names the list's history. A Redis that lost its data (restarted
   without persistence, flushed, or failed over to an empty replica) has no marker or a new
   one; one that failed over to a replica that missed writes has a counter behind ours, or
   a log that no longer holds the last change we read (as has a log trimmed past a process
   more than LOG_LENGTH changes behind: treated alike). Either way each process writes back
   the revocations it holds that Redis lacks (a newer entry in Redis wins), then reloads,
   and says in the log what was lost and what it wrote back. So a process started after the
   loss refuses what was revoked before it, once any process that held it has polled. The
   cost: an undo that raced the loss may be undone by it (revoking too much is the safe
   mistake, and the undo can be repeated).
4. Rate limits are one script call per request (a token bucket per key, on Redis's own
   clock so that replicas with skewed clocks agree), however many buckets it spends.
5. Stream slots are members of a sorted set scored by a lease deadline, renewed every
   HEARTBEAT while the stream lasts: a replica that dies leaks its slots for at most LEASE.
6. When Redis fails, limits fail open and revocations closed past the grace (both
   configurable); every failure is counted, and the change between reachable and not, the
   end of the grace and a loss of data are logged once each. After a failed limit call,
   limits are not asked of Redis for BACKOFF (or until the poller reaches it again): a Redis
   that drops packets would otherwise add the whole timeout to every request.
   The Redis URL is never logged (it may hold a password).

One Redis (a master found through Sentinel counts as one), not a Cluster: scripts touch
several keys that Cluster would spread over nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.asyncio import Redis

from ..config import Settings
from ..errors import StateUnavailable
from ..limits import TooManyRequests
from .base import BucketGroup, Clock, State, StreamLease, monotonic
from .connect import RedisLink, StateDown, bounded, open_link
from .redislog import CHANGES_PER_POLL, LOG_LENGTH, Change, Head, RedisRevocations, Snapshot
from .revocations import Kind, Revocation

log = logging.getLogger("proxy.state")

POLL_INTERVAL = 0.25
SYNC_TIMEOUT = 0.5
BACKOFF = 1.0
# The promise: a revocation takes effect on every replica within one second.
STALE_AFTER = 1.0
LEASE = 15.0
HEARTBEAT = 5.0
MASTER_CHECK = 1.0  # through Sentinel: how often to ask where the master is (connect.py)
SHOWN_IN_LOG = 10  # revocations named in a log line about lost ones; the rest are counted

T = TypeVar("T")


def _describe(entries: Sequence[Revocation]) -> str:
    """Revocations for a log line: which subject or jti (never a token), the first few."""
    shown = [
        f"sub {entry.value}" + (f" (iss {entry.iss})" if entry.iss else "")
        if entry.kind == "sub"
        else f"jti {entry.value}"
        for entry in entries[:SHOWN_IN_LOG]
    ]
    if len(entries) > SHOWN_IN_LOG:
        shown.append(f"and {len(entries) - SHOWN_IN_LOG} more")
    return ", ".join(shown)


class RedisState(State):
    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        redis: Redis | None = None,
        monotonic_clock: Clock = monotonic,
    ) -> None:
        super().__init__(settings, clock)
        state = settings.state
        self._settings = state
        self._timeout = state.timeout
        self._prefix = state.key_prefix
        # Staleness and the outage grace are measured on it (a wall clock may jump).
        self.monotonic = monotonic_clock
        self._redis = redis
        self._link: RedisLink | None = None  # when this state opened the client itself
        self._store: RedisRevocations | None = None
        self._poll_store: RedisRevocations | None = None
        self._epoch: bytes | None = None
        self._seq = -1  # no snapshot yet
        self._last: Change | None = None  # the last change read from the log
        # The highest change this process wrote itself: a Redis counting less lost it, even
        # if every change this process read is still there (rule 3).
        self._wrote = 0
        self._synced_at = -math.inf
        self._tasks: list[asyncio.Task[None]] = []
        # Set on close: the background loops end even if a cancellation is lost (redis-py
        # can swallow one that lands while it tears down a failed TLS connection).
        self._closing = asyncio.Event()
        self._down: str | None = None  # why Redis is failing, while it is
        self._down_since = 0.0
        self._master_checked_at = -math.inf
        self._grace_over_logged = False
        self._limits_resume_at = -math.inf  # limits skip Redis until then (rule 6)
        # Stream slots this process holds in Redis: member -> its sorted sets.
        self._held: dict[str, list[str]] = {}
        self._process = secrets.token_hex(6)
        self._serial = itertools.count()

    def reconfigure(self, settings: Settings) -> None:
        super().reconfigure(settings)
        self._per_client = settings.limits.max_streams_per_client
        self._per_subject = settings.limits.max_streams_per_subject

    async def open(self) -> None:
        self._closing.clear()
        if self._redis is None:
            self._link = open_link(self._settings)
            self._redis = self._link.redis
        redis = self._redis
        self._store = RedisRevocations(redis, self._prefix, self._timeout)
        # The poller is no request: it may wait longer (a reload of a long list, a busy
        # Redis) while requests keep to `timeout`; staleness is judged apart from it.
        self._poll_store = RedisRevocations(redis, self._prefix, max(self._timeout, SYNC_TIMEOUT))
        self._take = redis.register_script(_TAKE_TOKENS)
        self._acquire = redis.register_script(_ACQUIRE_SLOT)
        self._renew = redis.register_script(_RENEW_SLOTS)
        await self._sync_quietly()
        self._tasks = [
            asyncio.create_task(self._every(POLL_INTERVAL, self._sync_quietly)),
            asyncio.create_task(self._every(HEARTBEAT, self._renew_quietly)),
        ]

    async def close(self) -> None:
        self._closing.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._redis is not None:
            with contextlib.suppress(StateDown):
                await self._release_all()
            if self._link is not None:
                await self._link.close()
            else:
                await self._redis.aclose(close_connection_pool=True)
            self._redis = self._link = None

    async def check(self) -> str | None:
        if self._redis is None:
            return "not connected"
        redis = self._redis
        try:
            await bounded(self._timeout, lambda: redis.ping())
        except StateDown as exc:
            if not self.past_grace():
                return None  # serving on the copy: degraded() says so
            return f"unreachable ({exc}); {self._copy_state()}"
        if self.past_grace():
            return self._copy_state()
        return None

    def degraded(self) -> str | None:
        stale = self.stale_for()
        if self._down is None and stale is None:
            return None
        said = f"unreachable ({self._down}) for {self.monotonic() - self._down_since:.1f} s"
        if self._down is None:
            said = "answering, but the revocations were not confirmed"
        return f"{said}; {self._copy_state()}"

    def is_up(self) -> bool:
        return self._down is None

    def _copy_state(self) -> str:
        """What the revocation checks rest on now, for readiness and the log."""
        if self._seq < 0:
            return "no copy of the revocations loaded yet: tokens are refused (503)"
        age = self.monotonic() - self._synced_at
        copy = (
            f"this process's copy of the revocations ({len(self.revoked)} entries, confirmed "
            f"{age:.1f} s ago)"
        )
        if self._down is None and self.stale_for() is None:
            return f"{copy} is current"
        then = (
            "tokens are refused (503)"
            if self._revocations_closed
            else "tokens are let through on that copy (when_down.revocations: open)"
        )
        if self.past_grace():
            return f"{copy} is past state.outage_grace ({self._outage_grace:g} s): {then}"
        return (
            f"tokens are checked on {copy}; after state.outage_grace "
            f"({self._outage_grace:g} s) {then}"
        )

    # --- revocations (rules 2 and 3) -----------------------------------------------------

    def stale_for(self) -> float | None:
        age = self.monotonic() - self._synced_at
        return age if age > STALE_AFTER else None

    async def _sync(self) -> None:
        store = self._poll_store
        if store is None:
            raise StateDown("not connected")
        if self._seq < 0:  # the first load
            self._adopt(await store.snapshot(self._clock(), mark=True))
            return
        while True:
            head, logged = await store.changes(self._last.log_id if self._last else None)
            fresh, lost = self._continuation(head, logged)
            if lost is not None:
                await self._restore(store, lost)
                return
            for change in fresh:
                entry = change.entry
                if entry is None:
                    self.revoked.remove_id(change.entry_id)
                else:
                    self.revoked.add(entry)
                self._seq, self._last = change.seq, change
            if len(fresh) < CHANGES_PER_POLL:
                if self._seq < head.seq:
                    why = f"its counter is at {head.seq} but its log ends at {self._seq}"
                    await self._restore(store, why)
                    return
                self._synced_at = self.monotonic()
                return

    def _continuation(self, head: Head, logged: list[Change]) -> tuple[list[Change], str | None]:
        """The changes after ours, or why Redis no longer holds the history this copy was
        read from (rule 3). Replication copies a prefix of the log, and the log only grows
        at its end: if the last change we read is still there, under its number, everything
        before it is what we read, and what follows it continues it."""
        if head.epoch != self._epoch:
            return [], "its epoch marker is gone" if head.epoch is None else "its epoch changed"
        counted = max(self._seq, self._wrote)
        if head.seq < counted:
            return [], f"its change counter went back from {counted} to {head.seq}"
        fresh = logged
        if self._last is not None:
            if not logged or logged[0] != self._last:
                return [], f"its log no longer holds change {self._last.seq}, the last read here"
            fresh = logged[1:]
        for expected, change in enumerate(fresh, start=self._seq + 1):
            if change.seq != expected:
                return [], f"its log skips from change {expected - 1} to {change.seq}"
        return fresh, None

    async def _restore(self, store: RedisRevocations, why: str) -> None:
        now = self._clock()
        held = self.revoked.entries(now)
        written = await store.restore(held, now) if held else []
        self._adopt(await store.snapshot(now, mark=True))
        self.counters.restores += 1
        self.counters.restored += len(written)
        cause = (
            "restarted without persistence, flushed, failed over to a replica that missed "
            f"writes, or this process fell more than {LOG_LENGTH} changes behind"
        )
        if written:
            restored = set(written)
            lost = [entry for entry in held if entry.id in restored]
            log.warning(
                "state backend redis lost revocations (%s; %s): of the %d this process holds "
                "it lacked %d; written back: %s",
                why,
                cause,
                len(held),
                len(written),
                _describe(lost),
            )
        elif held:
            log.warning(
                "state backend redis changed its revocation history (%s; %s): the %d this "
                "process holds are all there (written back by another process, or none lost)",
                why,
                cause,
                len(held),
            )
        else:
            log.info(
                "state backend redis has a new revocation history (%s); this process held "
                "none to write back",
                why,
            )

    def _adopt(self, snapshot: Snapshot) -> None:
        self.revoked.replace(snapshot.entries)
        self._epoch, self._seq, self._last = snapshot.epoch, snapshot.seq, snapshot.last
        self._wrote = 0  # what this process wrote before is in the snapshot, or written back
        self._synced_at = self.monotonic()

    async def _sync_quietly(self) -> None:
        await self._follow_master()
        try:
            await self._sync()
        except StateDown as exc:
            self._note_down(str(exc))
        else:
            self._note_up()

    async def _follow_master(self) -> None:
        link = self._link
        if link is None or link.sentinel is None:
            return
        now = self.monotonic()
        if now - self._master_checked_at < MASTER_CHECK:
            return
        self._master_checked_at = now
        try:
            moved = await bounded(max(self._timeout, SYNC_TIMEOUT), link.follow_master)
        except StateDown as exc:
            # The master may still answer; the poll that follows says whether it does.
            self._failed(f"sentinel: {exc}")
            return
        if moved is not None:
            host, port = moved
            log.warning(
                "state backend redis: Sentinel names a new master at %s:%d; connections to "
                "the old one closed",
                host,
                port,
            )

    async def revoke(self, entry: Revocation) -> None:
        store = self._checked_store()
        seq = await self._write(lambda: store.put(entry, self._clock()), "revocation not stored")
        self.revoked.add(entry)  # in force here at once, elsewhere at the next poll
        self._wrote = max(self._wrote, seq)

    async def unrevoke(self, kind: Kind, value: str, iss: str | None) -> bool:
        store = self._checked_store()
        removed, seq = await self._write(
            lambda: store.delete(kind, value, iss, self._clock()), "revocation not removed"
        )
        self.revoked.remove(kind, value, iss)
        self._wrote = max(self._wrote, seq)
        return removed

    async def revocations(self) -> list[Revocation]:
        store = self._checked_store()
        return await self._write(lambda: store.load(self._clock()), "revocations not listed")

    async def _write(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """An administrative call: it is refused (503) rather than half done when Redis
        cannot take it; nothing changes in this process either."""
        try:
            return await call()
        except StateDown as exc:
            self._note_down(str(exc))
            raise StateUnavailable(
                f"{what}: redis {exc}",
                detail=f"{what}: the shared state (Redis) is unreachable; try again",
            ) from None

    def _checked_store(self) -> RedisRevocations:
        if self._store is None:
            raise StateUnavailable(
                "revocations: redis not connected",
                detail="the shared state (Redis) is not connected; try again",
            )
        return self._store

    # --- rate limits (rule 3) ------------------------------------------------------------

    async def take(self, groups: Sequence[BucketGroup]) -> list[TooManyRequests | None]:
        keys: list[str] = []
        args: list[str | float] = []
        for index, group in enumerate(groups):
            for bucket in group:
                keys.append(self._key("rate", bucket.key))
                args += [repr(bucket.rate.rate), str(bucket.rate.burst), str(index)]
        if not keys:
            return [None] * len(groups)
        try:
            self._check_backoff()
            answers: list[bytes] = await bounded(self._timeout, lambda: self._take(keys, args))
        except StateDown as exc:
            self._back_off(exc)
            refusal = self._limits_down(f"rate limits: {exc}")
            return [refusal] * len(groups)
        refusals: list[TooManyRequests | None] = []
        position = 0
        for group in groups:
            refusal = None
            for bucket in group:
                answer = answers[position]
                position += 1
                if answer not in (b"", b"-"):
                    refusal = TooManyRequests(f"rate limit per {bucket.what}", float(answer))
            refusals.append(refusal)
        return refusals

    # --- stream slots (rule 4) -----------------------------------------------------------

    async def acquire_stream(self, client: str, subject: str | None) -> StreamLease:
        # The process-wide cap and, should Redis fail, the per-process caps still hold.
        self.streams.acquire(client, subject)
        lease = StreamLease(client, subject)
        keys = [self._key("streams", ("client", client))]
        caps = [self._per_client]
        if subject is not None:
            keys.append(self._key("streams", ("subject", subject)))
            caps.append(self._per_subject)
        member = f"{self._process}:{next(self._serial)}"
        args = [member, repr(LEASE), *map(str, caps)]
        try:
            self._check_backoff()
            refused: int = await bounded(self._timeout, lambda: self._acquire(keys, args))
        except StateDown as exc:
            self._back_off(exc)
            try:
                self._limits_down(f"stream slots: {exc}")
            except BaseException:
                self.streams.release(client, subject)
                raise
            return lease
        if refused:
            self.streams.release(client, subject)
            cap = "client" if refused == 1 else "subject"
            raise TooManyRequests(f"streams per {cap} (limits.max_streams_per_{cap})", 1)
        lease.shared = member
        self._held[member] = keys
        return lease

    async def release_stream(self, lease: StreamLease) -> None:
        self.streams.release(lease.client, lease.subject)
        if lease.shared is None:
            return
        keys = self._held.pop(lease.shared, [])
        if not keys or self._redis is None:
            return
        redis, member = self._redis, lease.shared

        async def remove() -> None:
            async with redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zrem(key, member)
                await pipe.execute()

        try:
            await bounded(self._timeout, remove)
        except StateDown as exc:
            # The lease runs out on its own within LEASE.
            self._failed(f"stream slots: {exc}")

    async def _renew_quietly(self) -> None:
        if not self._held:
            return
        keys = [key for held in self._held.values() for key in held]
        members = [member for member, held in self._held.items() for _ in held]
        try:
            await bounded(self._timeout, lambda: self._renew(keys, [repr(LEASE), *members]))
        except StateDown as exc:
            self._failed(f"stream slots: {exc}")

    async def _release_all(self) -> None:
        if self._redis is None or not self._held:
            return
        redis, held = self._redis, dict(self._held)
        self._held.clear()

        async def remove() -> None:
            async with redis.pipeline(transaction=False) as pipe:
                for member, keys in held.items():
                    for key in keys:
                        pipe.zrem(key, member)
                await pipe.execute()

        await bounded(self._timeout, remove)

    # --- helpers -------------------------------------------------------------------------

    def _key(self, kind: str, parts: Sequence[str]) -> str:
        # Hashed: client addresses and subjects are caller-controlled and may be long.
        digest = hashlib.blake2b(json.dumps(list(parts)).encode(), digest_size=12).hexdigest()
        return f"{self._prefix}{kind}:{digest}"

    async def _every(self, interval: float, work: Callable[[], Awaitable[None]]) -> None:
        while not self._closing.is_set():
            await work()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._closing.wait()

    def _note_down(self, reason: str) -> None:
        self._failed(f"revocations: {reason}")
        was_down, self._down = self._down, reason
        if was_down is None:
            self._down_since = self.monotonic()
            log.warning(
                "state backend redis unreachable (%s): %s; rate limits and stream caps %s; "
                "new revocations are refused (503) until it answers",
                reason,
                self._copy_state(),
                "refuse requests (503)" if self._limits_closed else "let requests through",
            )
        elif not self._grace_over_logged and self.past_grace() and self._seq >= 0:
            self._grace_over_logged = True
            log.warning(
                "state backend redis unreachable for %.1f s (%s): %s",
                self.monotonic() - self._down_since,
                reason,
                self._copy_state(),
            )

    def _note_up(self) -> None:
        was_down, self._down = self._down, None
        if was_down is not None:
            log.warning(
                "state backend redis reachable again after %.1f s; %s",
                self.monotonic() - self._down_since,
                self._copy_state(),
            )
        self._grace_over_logged = False
        self._limits_resume_at = -math.inf

    def _check_backoff(self) -> None:
        if self.monotonic() < self._limits_resume_at:
            raise StateDown("backing off")

    def _back_off(self, exc: StateDown) -> None:
        if str(exc) != "backing off":
            self._limits_resume_at = self.monotonic() + BACKOFF


# KEYS: one bucket per key. ARGV: per key, rate, burst and its group's number. Buckets are
# spent in order; after a refusal the rest of that group is skipped ("-"). Answers per key:
# "" spent, "-" skipped, or the seconds until a token is back.
_TAKE_TOKENS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local answers = {}
local refused = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[i * 3 - 2])
  local burst = tonumber(ARGV[i * 3 - 1])
  local group = ARGV[i * 3]
  if refused[group] then
    answers[i] = '-'
  else
    local held = redis.call('HMGET', key, 'tokens', 'at')
    local tokens = tonumber(held[1]) or burst
    local at = tonumber(held[2]) or now
    tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
    if tokens < 1 then
      refused[group] = true
      answers[i] = tostring((1 - tokens) / rate)
    else
      tokens = tokens - 1
      answers[i] = ''
    end
    redis.call('HSET', key, 'tokens', tostring(tokens), 'at', tostring(now))
    redis.call('PEXPIRE', key, math.ceil((burst / rate + 1) * 1000))
  end
end
return answers
"""

# KEYS: the slot sets (client, then subject). ARGV: member, lease seconds, then each set's
# cap. Returns 0 when the slot was taken in every set, else the number of the full set.
_ACQUIRE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then
    return i
  end
end
local lease = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, tostring(now + lease), ARGV[1])
  redis.call('PEXPIRE', key, math.ceil(lease * 1000) + 1000)
end
return 0
"""

# KEYS: slot sets; ARGV: lease seconds, then the member held in each set (same order).
_RENEW_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', tostring(now + lease), ARGV[i + 1])
  redis.call('PEXPIRE', key, math.ceil(lease * 1000) + 1000)
end
return 0
"""
