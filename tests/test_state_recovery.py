"""A Redis that fails or forgets, against a real redis-server, with state objects in this
process: the outage grace on an injected clock (exact bounds, no sleeping for time), and the
write-back after Redis lost its data, was flushed, or failed over to a replica that missed
writes (emulated atomically with MULTI, as a lagging replica would look)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis

from proxy.errors import StateUnavailable, Unauthenticated
from proxy.ops import Telemetry
from proxy.state import Revocation, new_revocation
from proxy.state.redisstate import RedisState

from .conftest import Clock, build_config, config_dict
from .redisd import RedisServer

ISS = "https://idp.example"
KEY = "s3proxy:revocations"


def _settings(server: RedisServer, **state: Any) -> Any:
    data = config_dict(None, state={"backend": "redis", "url": server.url, **state})
    return build_config(data).settings


@asynccontextmanager
async def _opened(state: RedisState) -> AsyncIterator[RedisState]:
    await state.open()
    try:
        yield state
    finally:
        await state.close()


async def _until(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for the poller (every 0.25 s) to have done something; fails past `within`."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.02)


def _claims(sub: str, issued: float, jti: str | None = None) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": sub, "iss": ISS, "iat": issued, "exp": issued + 3600}
    if jti is not None:
        claims["jti"] = jti
    return claims


def _jti(value: str) -> Revocation:
    return new_revocation("jti", value, None, time.time(), 3600, 30)


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "proxy.state"
        and record.levelno == logging.WARNING
        and text in record.getMessage()
    ]


# --- the outage grace ----------------------------------------------------------------------


async def test_inside_the_grace_the_copy_is_enforced_past_it_tokens_are_refused(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "proxy.state")
    ticks = Clock(1000.0)  # the monotonic clock staleness and the grace are measured on
    state = RedisState(_settings(redis_server, outage_grace=30), time.time, monotonic_clock=ticks)
    issued = time.time() - 10
    async with _opened(state):
        await state.revoke(new_revocation("sub", "alice", ISS, time.time(), 3600, 30))
        assert await state.check() is None and state.degraded() is None
        redis_server.stop()
        await _until(lambda: not state.is_up())
        assert _warnings(caplog, "state backend redis unreachable (")

        ticks.now += 30  # the last confirmation was at 1000: exactly the grace, still inside
        state.check_token(_claims("bob", issued))
        with pytest.raises(Unauthenticated, match="token revoked"):
            state.check_token(_claims("alice", issued))
        assert state.counters.revocations_unconfirmed == 2
        assert await state.check() is None  # ready: it serves
        note = state.degraded()
        assert note is not None and note.startswith("unreachable (")
        assert "tokens are checked on this process's copy of the revocations (1 entries" in note
        assert "after state.outage_grace (30 s) tokens are refused (503)" in note
        # Nobody can revoke meanwhile, and a refused revocation changes nothing here either.
        with pytest.raises(StateUnavailable) as refused:
            await state.revoke(new_revocation("sub", "bob", ISS, time.time(), 3600, 30))
        assert refused.value.detail == (
            "revocation not stored: the shared state (Redis) is unreachable; try again"
        )
        state.check_token(_claims("bob", issued))

        ticks.now += 0.01  # past it
        with pytest.raises(StateUnavailable, match=r"past state\.outage_grace"):
            state.check_token(_claims("bob", issued))
        assert state.counters.revocations_refused == 1
        problem = await state.check()
        assert problem is not None and "past state.outage_grace (30 s)" in problem
        await _until(lambda: bool(_warnings(caplog, "is past state.outage_grace")))

        redis_server.start()  # empty, as it has no persistence
        await _until(state.is_up)
        state.check_token(_claims("bob", issued))
        with pytest.raises(Unauthenticated, match="token revoked"):
            state.check_token(_claims("alice", issued))
        assert (await state.check(), state.degraded()) == (None, None)
        assert _warnings(caplog, "state backend redis reachable again after 30.0 s")


async def test_with_no_grace_tokens_are_refused_a_second_into_the_outage(
    redis_server: RedisServer,
) -> None:
    ticks = Clock(1000.0)
    state = RedisState(_settings(redis_server, outage_grace=0), time.time, monotonic_clock=ticks)
    async with _opened(state):
        redis_server.stop()
        await _until(lambda: not state.is_up())
        ticks.now += 1.0  # the one-second bound of a current copy
        state.check_token(_claims("bob", time.time()))
        ticks.now += 0.01
        with pytest.raises(StateUnavailable):
            state.check_token(_claims("bob", time.time()))


async def test_a_reload_retunes_the_grace(redis_server: RedisServer) -> None:
    ticks = Clock(1000.0)
    state = RedisState(_settings(redis_server, outage_grace=30), time.time, monotonic_clock=ticks)
    async with _opened(state):
        redis_server.stop()
        await _until(lambda: not state.is_up())
        ticks.now += 10
        state.check_token(_claims("bob", time.time()))
        state.reconfigure(_settings(redis_server, outage_grace=5))
        with pytest.raises(StateUnavailable):
            state.check_token(_claims("bob", time.time()))


async def test_a_process_that_never_loaded_a_copy_refuses_from_the_start(
    redis_server: RedisServer,
) -> None:
    settings = _settings(redis_server)
    redis_server.stop()
    state = RedisState(settings, time.time, monotonic_clock=Clock(1000.0))
    async with _opened(state):
        with pytest.raises(StateUnavailable):
            state.check_token(_claims("bob", time.time()))
        problem = await state.check()
        assert problem is not None and "no copy of the revocations loaded yet" in problem


async def test_the_state_series_show_an_outage(redis_server: RedisServer) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    ticks = Clock(1000.0)
    state = RedisState(_settings(redis_server, outage_grace=5), time.time, monotonic_clock=ticks)
    telemetry = Telemetry()
    telemetry.watch_state(state)

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = telemetry.render().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async with _opened(state):
        await state.revoke(_jti("j1"))
        before = scrape()
        assert before[("proxy_state_up", ())] == 1
        assert before[("proxy_state_revocations", ())] == 1
        assert before[("proxy_state_revocations_unconfirmed_seconds", ())] == 0
        redis_server.stop()
        await _until(lambda: not state.is_up())
        ticks.now += 4
        state.check_token(_claims("bob", time.time()))
        ticks.now += 2
        with pytest.raises(StateUnavailable):
            state.check_token(_claims("bob", time.time()))
        after = scrape()
        assert after[("proxy_state_up", ())] == 0
        assert after[("proxy_state_revocations_unconfirmed_seconds", ())] == pytest.approx(6)
        failed = (("operation", "revocations"), ("outcome", "failed"))
        assert after[("proxy_state_errors_total", failed)] >= 1
        decided = (("check", "revocations"), ("decision", "unconfirmed_copy"))
        assert after[("proxy_state_decisions_total", decided)] == 1
        refused = (("check", "revocations"), ("decision", "refused"))
        assert after[("proxy_state_decisions_total", refused)] == 1
        assert scrape()[("proxy_state_decisions_total", refused)] == 1  # counted once
        redis_server.start()
        await _until(lambda: state.counters.restores == 1)
        restored = scrape()
        assert restored[("proxy_state_restores_total", ())] == 1
        assert restored[("proxy_state_restored_revocations_total", ())] == 1


# --- Redis that forgets --------------------------------------------------------------------


async def test_a_flushed_redis_gets_back_what_the_processes_hold_and_a_new_one_loads_it(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "proxy.state")
    settings = _settings(redis_server)
    issued = time.time() - 10
    direct = redis.Redis.from_url(redis_server.url)
    async with (
        _opened(RedisState(settings, time.time)) as first,
        _opened(RedisState(settings, time.time)) as second,
    ):
        await first.revoke(new_revocation("sub", "alice", ISS, time.time(), 3600, 30))
        await second.revoke(_jti("lost-laptop"))
        await _until(lambda: len(first.revoked) == len(second.revoked) == 2)
        direct.flushall()
        await _until(lambda: first.counters.restores == second.counters.restores == 1)
        assert direct.hlen(KEY) == 2
        assert first.counters.restored + second.counters.restored == 2
        for state in (first, second):
            with pytest.raises(Unauthenticated):
                state.check_token(_claims("alice", issued))
            with pytest.raises(Unauthenticated):
                state.check_token(_claims("carol", issued, jti="lost-laptop"))
        (written,) = _warnings(caplog, "written back: ")
        assert "its epoch marker is gone" in written
        assert "of the 2 this process holds it lacked 2" in written
        assert "jti lost-laptop" in written and f"sub alice (iss {ISS})" in written
        assert len(_warnings(caplog, "are all there (written back by another process")) == 1
        # A process started after the loss loads what the others wrote back.
        async with _opened(RedisState(settings, time.time)) as third:
            with pytest.raises(Unauthenticated):
                third.check_token(_claims("alice", issued))
            assert third.counters.restores == 0
    direct.close()


async def test_a_redis_with_nothing_left_to_lose_says_so_quietly(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "proxy.state")
    async with _opened(RedisState(_settings(redis_server), time.time)) as state:
        with redis.Redis.from_url(redis_server.url) as direct:
            direct.flushall()
        await _until(lambda: state.counters.restores == 1)
    assert not _warnings(caplog, "lost")
    assert any("held none to write back" in record.getMessage() for record in caplog.records)


async def _three_revoked(server: RedisServer) -> tuple[RedisState, RedisState]:
    settings = _settings(server)
    first, second = RedisState(settings, time.time), RedisState(settings, time.time)
    await first.open()
    await second.open()
    for name in ("j1", "j2", "j3"):
        await first.revoke(_jti(name))
    await _until(lambda: len(second.revoked) == 3 and second._seq == 3)
    return first, second


def _forget_the_last_write(pipe: Any, direct: redis.Redis) -> bytes:
    """Queue what a replica that missed the third write holds instead; the log's id of the
    entry before it."""
    (last_id, _), (before_id, _) = direct.xrevrange(f"{KEY}:log", count=2)
    pipe.hdel(KEY, '["jti", null, "j3"]')
    pipe.zrem(f"{KEY}:expiry", '["jti", null, "j3"]')
    pipe.set(f"{KEY}:seq", 2)
    pipe.xdel(f"{KEY}:log", last_id)
    return bytes(before_id)


async def test_a_new_master_that_missed_a_write_gets_it_back(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "proxy.state")
    first, second = await _three_revoked(redis_server)
    try:
        with redis.Redis.from_url(redis_server.url) as direct:
            with direct.pipeline(transaction=True) as pipe:
                _forget_the_last_write(pipe, direct)
                pipe.execute()
            await _until(lambda: direct.hexists(KEY, '["jti", null, "j3"]'))
        assert _warnings(caplog, "its change counter went back from 3 to 2")
        for state in (first, second):
            await _until(lambda: state.counters.restores == 1)  # noqa: B023
            assert {entry.value for entry in state.revoked.entries(time.time())} == {
                "j1",
                "j2",
                "j3",
            }
    finally:
        await first.close()
        await second.close()


async def test_a_write_to_a_new_master_that_missed_one_is_not_taken_for_the_one_missed(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The new master counts the next write as change 3 again: the counter agrees with ours,
    but the log after our place holds a change we have not seen under a number we have."""
    caplog.set_level(logging.INFO, "proxy.state")
    first, second = await _three_revoked(redis_server)
    try:
        with redis.Redis.from_url(redis_server.url) as direct:
            store = first._store
            assert store is not None
            entry = _jti("j9")
            direct.script_load(store._write.script)
            with direct.pipeline(transaction=True) as pipe:
                _forget_the_last_write(pipe, direct)
                pipe.evalsha(
                    store._write.sha,
                    5,
                    *store._keys,
                    entry.id,
                    entry.dumps(),
                    repr(entry.expires_at),
                    repr(time.time()),
                    "unused",
                    10_000,
                )
                pipe.execute()
            await _until(lambda: direct.hlen(KEY) == 4)
        assert _warnings(caplog, "its log no longer holds change 3, the last read here")
        for state in (first, second):
            await _until(lambda: len(state.revoked) == 4)  # noqa: B023
            assert {entry.value for entry in state.revoked.entries(time.time())} == {
                "j1",
                "j2",
                "j3",
                "j9",
            }
    finally:
        await first.close()
        await second.close()


async def test_another_change_logged_under_the_id_and_number_read_last_is_not_mistaken(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A new master that missed the third write logs the next one as change 3 again, and,
    its clock behind the old master's, even under the same id: only the content tells."""
    caplog.set_level(logging.INFO, "proxy.state")
    first, second = await _three_revoked(redis_server)
    log = f"{KEY}:log"
    try:
        with redis.Redis.from_url(redis_server.url) as direct:
            ((last_id, _),) = direct.xrevrange(log, count=1)
            with direct.pipeline(transaction=True) as pipe:
                before_id = _forget_the_last_write(pipe, direct)
                pipe.execute_command("XSETID", log, before_id)
                ms, _, number = last_id.decode().partition("-")
                for n, name in enumerate(("j9", "j10")):
                    entry = _jti(name)
                    pipe.hset(KEY, entry.id, entry.dumps())
                    pipe.zadd(f"{KEY}:expiry", {entry.id: entry.expires_at})
                    pipe.set(f"{KEY}:seq", 3 + n)
                    fields = {"seq": 3 + n, "id": entry.id, "entry": entry.dumps()}
                    pipe.xadd(log, fields, id=f"{ms}-{int(number) + n}")
                pipe.execute()
            assert (
                direct.xrange(log, min=last_id, max=last_id)[0][1][b"id"] != b'["jti", null, "j3"]'
            )
            await _until(lambda: direct.hlen(KEY) == 5)
        assert _warnings(caplog, "its log no longer holds change 3, the last read here")
        for state in (first, second):
            await _until(lambda: len(state.revoked) == 5)  # noqa: B023
    finally:
        await first.close()
        await second.close()
