"""The revocation list as Redis holds it: a hash of entries (the truth), a sorted set of their
expiry times (for pruning), a change log (a stream), its counter and an epoch marker. Reads
and writes it, each in one round trip; never decides what a change means for a copy (that
is redisstate.py's rule 3) and never logs.

Used by the server's state and by `python -m proxy revoke`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from .connect import bounded
from .revocations import Kind, Revocation, entry_id

CHANGES_PER_POLL = 1000  # changes read in one poll, at most
LOG_LENGTH = 10_000  # changes kept in the log; a process further behind reconciles


@dataclass(frozen=True)
class Head:
    """Where the list in Redis stands: its epoch marker (None: there is none) and counter."""

    epoch: bytes | None
    seq: int


@dataclass(frozen=True)
class Snapshot:
    """The whole list, and where in the change log it stands."""

    epoch: bytes | None
    seq: int
    last: Change | None  # the log's last entry
    entries: list[Revocation]


@dataclass(frozen=True)
class Change:
    """One entry of the change log. Two are equal only if all of it is: a new master that
    logs another change under the same id and number is not mistaken for the old one."""

    seq: int
    log_id: bytes
    entry_id: str
    text: bytes  # the entry as logged; empty: removed

    @property
    def entry(self) -> Revocation | None:
        return _parse(self.text)

    @classmethod
    def logged(cls, log_id: bytes, fields: dict[bytes, bytes]) -> Change:
        return cls(int(fields[b"seq"]), log_id, fields[b"id"].decode(), fields.get(b"entry", b""))


class RedisRevocations:
    """The revocation list in Redis, under `prefix`, each call bounded by `timeout`."""

    def __init__(self, redis: Redis, prefix: str, timeout: float) -> None:
        self._redis = redis
        self._timeout = timeout
        name = f"{prefix}revocations"
        self._keys = [name, f"{name}:expiry", f"{name}:log", f"{name}:seq", f"{name}:epoch"]
        self._write = redis.register_script(_WRITE_REVOCATION)
        self._restore = redis.register_script(_RESTORE_REVOCATIONS)

    async def put(self, entry: Revocation, now: float) -> int:
        """Store the entry; the number its change was logged under."""
        _, seq = await self._run_write(entry.id, entry.dumps(), entry.expires_at, now)
        return seq

    async def delete(self, kind: Kind, value: str, iss: str | None, now: float) -> tuple[bool, int]:
        """Whether there was such an entry, and the number the change was logged under."""
        removed, seq = await self._run_write(entry_id(kind, value, iss), "", 0, now)
        return bool(removed), seq

    async def load(self, now: float) -> list[Revocation]:
        return (await self.snapshot(now)).entries

    async def snapshot(self, now: float, mark: bool = False) -> Snapshot:
        """The whole list. `mark`: first set an epoch marker if there is none (rule 3), so
        that a later loss of the data shows."""
        entries, _, log, seq, epoch = self._keys

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                if mark:
                    pipe.set(epoch, secrets.token_hex(8), nx=True)
                pipe.get(epoch)
                pipe.get(seq)
                pipe.hgetall(entries)
                pipe.xrevrange(log, count=1)
                answer: list[Any] = await pipe.execute()
                return answer[1:] if mark else answer

        found_epoch, found_seq, raw, last = await bounded(self._timeout, read)
        live = []
        for text in raw.values():
            entry = _parse(text)
            if entry is not None and now < entry.expires_at:
                live.append(entry)
        return Snapshot(
            found_epoch,
            int(found_seq or 0),
            Change.logged(*last[0]) if last else None,
            sorted(live, key=lambda e: e.revoked_at),
        )

    async def changes(self, since: bytes | None) -> tuple[Head, list[Change]]:
        """Where the list stands, and the log from `since` on, that entry included (or from
        the start): at most CHANGES_PER_POLL after it. The head is read first: every change
        it counts is in the log."""
        _, _, log, seq, epoch = self._keys

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(epoch)
                pipe.get(seq)
                pipe.xrange(log, min=since or b"-", count=CHANGES_PER_POLL + 1)
                answer: list[Any] = await pipe.execute()
                return answer

        found_epoch, found_seq, logged = await bounded(self._timeout, read)
        changes = [Change.logged(log_id, fields) for log_id, fields in logged]
        return Head(found_epoch, int(found_seq or 0)), changes

    async def restore(self, entries: Sequence[Revocation], now: float) -> list[str]:
        """Write back the entries Redis lacks or holds an older version of (by revoked_at),
        each logged as a change; the ids of those written."""
        args: list[str | int] = [secrets.token_hex(8), LOG_LENGTH, repr(now)]
        for entry in entries:
            args += [entry.id, entry.dumps(), repr(entry.expires_at), repr(entry.revoked_at)]
        written: list[bytes] = await bounded(self._timeout, lambda: self._restore(self._keys, args))
        return [found.decode() for found in written]

    async def _run_write(
        self, field: str, value: str, expires_at: float, now: float
    ) -> tuple[int, int]:
        args: list[str | int] = [
            field,
            value,
            repr(expires_at),
            repr(now),
            secrets.token_hex(8),
            LOG_LENGTH,
        ]
        result, seq = await bounded(self._timeout, lambda: self._write(self._keys, args))
        return int(result), int(seq)


def _parse(text: bytes) -> Revocation | None:
    if not text:
        return None
    try:
        return Revocation.loads(text)
    except ValueError:
        return None  # not ours to judge; it expires with its expiry score


# KEYS of both scripts: entries hash, expiry zset, change log, sequence, epoch. Expired
# entries are pruned on every write (found by their expiry score, so a write costs the same
# with a long list), and every key expires with the last entry.
_SHARED = """
local function log_change(id, entry, length)
  local seq = redis.call('INCR', KEYS[4])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', length, '*', 'seq', seq, 'id', id, 'entry', entry)
  return seq
end
local function prune_and_expire(now)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, id in ipairs(expired) do
    redis.call('HDEL', KEYS[1], id)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  if #last > 0 then
    local until_ms = math.ceil(tonumber(last[2]) * 1000)
    for i = 1, 5 do
      redis.call('PEXPIREAT', KEYS[i], until_ms)
    end
  end
end
"""

# ARGV: entry id, entry JSON ("" removes it), its expiry, now, an epoch for a Redis that has
# none yet, the log's length. Returns whether the entry was there (for a removal) and the
# change's number.
_WRITE_REVOCATION = (
    _SHARED
    + """
local result = 1
if ARGV[2] == '' then
  result = redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
redis.call('SET', KEYS[5], ARGV[5], 'NX')
local seq = log_change(ARGV[1], ARGV[2], ARGV[6])
prune_and_expire(ARGV[4])
return {result, seq}
"""
)

# ARGV: an epoch for a Redis that has none, the log's length, now, then per entry its id,
# JSON, expiry and revoked_at. An entry is written (and logged as a change) when Redis lacks
# it or holds one revoked earlier; a value that is not ours counts as lacking. Returns the
# ids written.
_RESTORE_REVOCATIONS = (
    _SHARED
    + """
redis.call('SET', KEYS[5], ARGV[1], 'NX')
local written = {}
for i = 4, #ARGV, 4 do
  local id = ARGV[i]
  local held = redis.call('HGET', KEYS[1], id)
  local lacking = not held
  if held then
    local ok, entry = pcall(cjson.decode, held)
    local at = ok and type(entry) == 'table' and tonumber(entry['revoked_at'])
    lacking = (not at) or at < tonumber(ARGV[i + 3])
  end
  if lacking then
    redis.call('HSET', KEYS[1], id, ARGV[i + 1])
    redis.call('ZADD', KEYS[2], ARGV[i + 2], id)
    log_change(id, ARGV[i + 1], ARGV[2])
    written[#written + 1] = id
  end
end
prune_and_expire(ARGV[3])
return written
"""
)
