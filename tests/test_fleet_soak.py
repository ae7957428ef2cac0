"""The fleet soak (issue 23): two proxy replicas (real `python -m proxy serve` processes) behind
tests/balancer.py speaking the PROXY protocol, sharing a real redis-server, reading moto
through a stand-in that can freeze (tests/faulty_s3.py). Under steady load from several
client addresses, it:

1. revokes a subject through the admin endpoint and waits until both replicas refuse it;
2. restarts Redis empty (no persistence);
3. freezes S3 for a few seconds;
4. reloads one replica with SIGHUP;
5. drains the other with SIGTERM.

Asserted: every body's hash matches its object; each client reached the replicas as itself
(the PROXY header), never as the balancer; no success for the revoked subject once the
revocation propagated; errors only inside the fault windows and only of the statuses
documented for them (docs/failures.md): 503 while Redis is away past state.outage_grace, 504
while S3 is frozen, 503 with Retry-After while a replica drains; and no request left without
an answer. Bounded at 90 s; it prints its figures.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import math
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import StateSettings

from .balancer import Balancer
from .conftest import S3Objects, config_dict, make_token
from .faulty_s3 import FaultyS3
from .redisd import REDIS_SERVER, RedisServer
from .running import RunningProxy, running_proxy

WORKERS = 6  # client addresses 127.0.0.11 .. 127.0.0.16
PACE = 0.02  # seconds between one worker's requests: bounds the CPU a shared machine gives it
PROBE_FROM = "127.0.0.50"  # direct to a replica: untrusted, so no PROXY header is needed
ADMIN_FROM = "127.0.0.60"
CLIENTS = {f"127.0.0.{11 + n}" for n in range(WORKERS)}
FIRST_BYTE_TIMEOUT = 1.0
DRAIN_DELAY = 1.0
# The scenario, seconds after the load starts.
REVOKE_AT, REDIS_STOP_AT, REDIS_DOWN_FOR = 2.0, 6.0, 2.0
S3_FREEZE_AT, S3_FROZEN_FOR = 13.0, 3.0
RELOAD_AT, DRAIN_AT, LOAD_FOR = 19.0, 22.0, 28.0
SETTLE = 1.0  # after a fault ends, seconds its errors may still show (a request begun inside)
# Features of the state helper's branch ("fleetstate") the soak exercises; until it is merged,
# the assertions that need them are skipped by name.
HAS_OUTAGE_GRACE = "outage_grace" in StateSettings.model_fields
NEEDS_FLEETSTATE = (
    "needs state.outage_grace and the write-back of revocations to a Redis that restarted "
    "empty (the fleetstate branch), not on this branch yet"
)

ADMIN = make_token("root", role="admin", ttl=3600)
ALICE = make_token("alice", ttl=3600)
MALLORY = make_token("mallory", ttl=3600)


@dataclass
class Outcome:
    kind: str
    started: float
    ended: float
    status: int  # 0: no answer at all (the connection failed or closed)
    error: str | None = None
    body_ok: bool | None = None  # None: no body to check
    retry_after: str | None = None


@dataclass
class Window:
    name: str
    start: float
    allowed: frozenset[int]  # the statuses documented for this fault
    end: float = math.inf

    def holds(self, outcome: Outcome) -> bool:
        return outcome.started < self.end + SETTLE and outcome.ended > self.start


@dataclass
class Timeline:
    windows: list[Window] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    kind: str
    method: str
    path: str
    token: str
    body: bytes | None = None  # the object's bytes, to hash the answer against


def _requests(s3: S3Objects) -> list[Request]:
    sign = json.dumps({"paths": ["/photos/42", "/stable/photos/42"]}).encode()
    return [
        Request("report", "GET", "/admin/exports/q4.pdf", ADMIN, s3.report),
        Request("photo", "GET", "/stream/photos/42", ALICE, s3.photo),
        Request("notes", "GET", "/me/notes.txt", ALICE, s3.notes),
        Request("sign", "POST", "/_sign", ALICE, sign),
        Request("revoked", "GET", "/stream/photos/42", MALLORY, s3.photo),
        Request("photo", "GET", "/stream/photos/42", ALICE, s3.photo),
        Request("report", "GET", "/admin/exports/q4.pdf", ADMIN, s3.report),
        Request("album", "GET", "/users/alice/albums/trip/1.jpg", ALICE, s3.album),
        Request("revoked", "GET", "/stream/photos/42", MALLORY, s3.photo),
        Request("big", "GET", "/admin/exports/big.bin", ADMIN, s3.big),
    ]


async def _send(session: aiohttp.ClientSession, base: str, request: Request) -> Outcome:
    loop = asyncio.get_running_loop()
    started = loop.time()
    headers = {"Authorization": f"Bearer {request.token}"}
    data = None
    if request.method == "POST":
        data, headers["Content-Type"] = request.body, "application/json"
    try:
        async with (
            asyncio.timeout(30),
            session.request(
                request.method, base + request.path, headers=headers, data=data
            ) as answer,
        ):
            body = await answer.read()
            outcome = Outcome(
                request.kind,
                started,
                loop.time(),
                answer.status,
                retry_after=answer.headers.get("Retry-After"),
            )
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Outcome(request.kind, started, loop.time(), 0, error=type(exc).__name__)
    if outcome.status == 200:
        if request.kind == "sign":
            results = json.loads(body)["results"]
            outcome.body_ok = all("url" in result for result in results)
        else:
            assert request.body is not None
            expected = hashlib.sha256(request.body).digest()
            outcome.body_ok = hashlib.sha256(body).digest() == expected
    return outcome


async def _worker(
    number: int, base: str, plan: list[Request], stop: asyncio.Event, out: list[Outcome]
) -> None:
    connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{11 + number}", 0), limit=2)
    async with aiohttp.ClientSession(connector=connector) as session:
        turn = number
        while not stop.is_set():
            out.append(await _send(session, base, plan[turn % len(plan)]))
            turn += 1
            await asyncio.sleep(PACE)


@asynccontextmanager
async def _direct() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(local_addr=(PROBE_FROM, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def _status(session: aiohttp.ClientSession, url: str, token: str) -> int:
    try:
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as answer:
            await answer.read()
            return answer.status
    except aiohttp.ClientError:
        return 0


async def _until(condition: Any, within: float, what: str) -> float:
    """Poll `condition` (an async callable) every 50 ms; the time it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await condition():
        assert loop.time() - started < within, f"not within {within} s: {what}"
        await asyncio.sleep(0.05)
    return loop.time() - started


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (scripts/test.sh installs it when root)")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _config(faulty: FaultyS3, redis: RedisServer) -> dict[str, Any]:
    return config_dict(
        faulty.url,
        listen={
            "trusted_proxies": ["127.0.0.1/32"],  # the balancer
            "proxy_protocol": True,
            "drain_delay": DRAIN_DELAY,
            "shutdown_grace": 15,
        },
        s3={
            "first_byte_timeout": FIRST_BYTE_TIMEOUT,
            "read_timeout": 10,
            "request_timeout": 10,
            "max_attempts": 2,
        },
        state={"backend": "redis", "url": redis.url},
        admin={"access": {"claims": {"role": "admin"}}},
        health={"cache": 1, "timeout": 2},
    )


async def test_the_fleet_under_faults(
    s3: S3Objects, redis: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with asyncio.timeout(90):
        faulty = FaultyS3(upstream=s3.endpoint)
        await faulty.start()
        try:
            with ExitStack() as stack:
                replicas = []
                for name in ("a", "b"):
                    (tmp_path / name).mkdir()
                    started = running_proxy(copy.deepcopy(_config(faulty, redis)), tmp_path / name)
                    replicas.append(await asyncio.to_thread(stack.enter_context, started))
                await _soak(s3, redis, faulty, replicas, capsys)
        finally:
            await faulty.close()


async def _soak(
    s3: S3Objects,
    redis: RedisServer,
    faulty: FaultyS3,
    replicas: list[RunningProxy],
    capsys: pytest.CaptureFixture[str],
) -> None:
    loop = asyncio.get_running_loop()
    reloaded, drained = replicas
    balancer = Balancer([("127.0.0.1", r.port) for r in replicas], mode="proxy-v2", interval=0.25)
    base = f"http://127.0.0.1:{await balancer.start()}"

    async def all_ready() -> bool:
        return all(balancer.healthy.values())

    await _until(all_ready, 20, "both replicas ready before the load")
    timeline = Timeline()
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    plan = _requests(s3)
    workers = [
        asyncio.ensure_future(_worker(n, base, plan, stop, outcomes)) for n in range(WORKERS)
    ]
    start = loop.time()
    direct = [f"http://127.0.0.1:{r.port}/stream/photos/42" for r in replicas]

    async def at(offset: float) -> None:
        await asyncio.sleep(max(0.0, start + offset - loop.time()))

    try:
        async with _direct() as probe:
            # 1. Revoke mallory through the balancer; wait until both replicas refuse him.
            await at(REVOKE_AT)
            admin_from = aiohttp.TCPConnector(local_addr=(ADMIN_FROM, 0))
            # A replica may refuse mallory before the admin's 201 is back: "revoking" is when
            # the revocation was asked for, "revoked" when it was confirmed.
            timeline.marks["revoking"] = loop.time()
            async with (
                aiohttp.ClientSession(connector=admin_from) as admin,
                admin.post(
                    f"{base}/_admin/revocations",
                    json={"sub": "mallory"},
                    headers={"Authorization": f"Bearer {ADMIN}"},
                ) as answer,
            ):
                assert answer.status == 201, await answer.text()
            timeline.marks["revoked"] = loop.time()

            async def refused_everywhere() -> bool:
                return all([await _status(probe, url, MALLORY) == 401 for url in direct])

            await _until(refused_everywhere, 10, "the revocation reaches both replicas")
            timeline.marks["propagated"] = loop.time()

            # 2. Redis restarts empty.
            await at(REDIS_STOP_AT)
            redis_window = Window("redis restarted empty", loop.time(), frozenset({503}))
            timeline.windows.append(redis_window)
            await asyncio.to_thread(redis.stop)
            await asyncio.sleep(REDIS_DOWN_FOR)
            await asyncio.to_thread(redis.start)
            timeline.marks["redis back"] = loop.time()

            async def served_everywhere() -> bool:
                return all([await _status(probe, url, ALICE) == 200 for url in direct])

            # The fault lasts until every replica serves a token again (at once with the
            # outage grace; without it, once each has polled Redis back).
            await _until(served_everywhere, 10, "both replicas serve again after Redis")
            redis_window.end = loop.time()

            # 3. S3 freezes.
            await at(S3_FREEZE_AT)
            s3_window = Window("S3 frozen", loop.time(), frozenset({504}))
            timeline.windows.append(s3_window)
            faulty.pause()
            await asyncio.sleep(S3_FROZEN_FOR)
            faulty.resume()
            await _until(served_everywhere, 10, "both replicas stream again after S3")
            s3_window.end = loop.time()

            # 4. One replica reloads its (unchanged) config.
            await at(RELOAD_AT)
            reloaded.signal(signal.SIGHUP)
            await asyncio.to_thread(reloaded.wait_for, "config reloaded")
            timeline.marks["reloaded"] = loop.time()

            # 5. The other drains and exits.
            await at(DRAIN_AT)
            drain_window = Window("replica draining", loop.time(), frozenset({503}))
            timeline.windows.append(drain_window)
            drained.signal(signal.SIGTERM)
            code = await asyncio.to_thread(drained.process.wait, 30)
            drain_window.end = loop.time()
            timeline.marks["drained"] = loop.time()
            assert code == 0

            await at(LOAD_FOR)
            # After it all: mallory is still refused by the replica left, with Redis emptied.
            after_restart = await _status(probe, direct[0], MALLORY)
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        await balancer.close()

    _report(outcomes, timeline, start, balancer, capsys)
    _check(outcomes, timeline, after_restart)
    _check_clients(replicas)


def _check_clients(replicas: list[RunningProxy]) -> None:
    """The replicas saw each client's own address (from the balancer's PROXY header), never
    the balancer's: per-client limits and the log are per user."""
    seen: Counter[str] = Counter()
    for replica in replicas:
        for line in replica.output.splitlines():
            if line.startswith("{") and '"client"' in line:
                seen[json.loads(line)["client"]] += 1
    assert set(seen) <= CLIENTS | {PROBE_FROM, ADMIN_FROM}, seen
    assert set(seen) >= CLIENTS, seen


def _check(outcomes: list[Outcome], timeline: Timeline, after_restart: int) -> None:
    assert len(outcomes) > 500, "too little load to say anything"
    assert not [o for o in outcomes if o.body_ok is False], "a body did not match its object"

    propagated, redis_stop = timeline.marks["propagated"], timeline.windows[0].start
    revoked = [o for o in outcomes if o.kind == "revoked"]
    before = [o for o in revoked if o.ended < timeline.marks["revoking"]]
    assert before and all(o.status == 200 for o in before), "mallory was served until revoked"
    served = [o for o in revoked if o.status == 200 and o.started > propagated]
    assert not [o for o in served if o.started < redis_stop], "a revoked subject was served"

    def expected(outcome: Outcome) -> bool:
        if outcome.kind == "revoked" and outcome.ended >= timeline.marks["revoking"]:
            return outcome.status in (200, 401)  # 200 only until propagated (checked above)
        return outcome.status == 200

    for outcome in (o for o in outcomes if not expected(o)):
        windows = [w for w in timeline.windows if w.holds(outcome)]
        assert windows, f"an error outside every fault window: {outcome}"
        assert any(outcome.status in w.allowed for w in windows), (
            f"status {outcome.status} ({outcome.error}) is not documented for "
            f"{[w.name for w in windows]}: {outcome}"
        )
        if outcome.status == 503:
            assert outcome.retry_after is not None, f"a 503 without Retry-After: {outcome}"

    if not HAS_OUTAGE_GRACE:
        pytest.skip(NEEDS_FLEETSTATE)
    # Redis restarted empty: the replicas wrote back what they held, so mallory stays revoked
    # and, inside state.outage_grace, nobody else noticed the outage.
    assert not served, f"the revoked subject was served {len(served)} times after Redis restarted"
    assert after_restart == 401
    redis_errors = [o for o in outcomes if not expected(o) and timeline.windows[0].holds(o)]
    s3_window = timeline.windows[1]
    assert not [o for o in redis_errors if not s3_window.holds(o)], "the Redis outage showed"


def _report(
    outcomes: list[Outcome],
    timeline: Timeline,
    start: float,
    balancer: Balancer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def at(moment: float) -> str:
        return f"{moment - start:5.1f} s"

    lines = [
        "",
        f"fleet soak: {len(outcomes)} requests from {WORKERS} clients over "
        f"{max(o.ended for o in outcomes) - start:.1f} s, through {balancer.connections} "
        f"balanced connections ({balancer.refused} refused by a closed port and retried)",
    ]
    by_kind = Counter((o.kind, o.status) for o in outcomes)
    for kind in sorted({o.kind for o in outcomes}):
        statuses = ", ".join(
            f"{status}: {n}" for (k, status), n in sorted(by_kind.items()) if k == kind
        )
        durations = sorted(o.ended - o.started for o in outcomes if o.kind == kind)
        p50 = durations[len(durations) // 2] * 1000
        p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))] * 1000
        lines.append(f"  {kind:8} {statuses:32} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")
    checked = sum(1 for o in outcomes if o.body_ok)
    lines.append(f"  bodies hashed and matching: {checked}, mismatches: 0 asserted below")
    for name, moment in timeline.marks.items():
        lines.append(f"  {at(moment)}  {name}")
    timeline_marks = timeline.marks
    lines.append(
        "  revocation propagated to both replicas in "
        f"{(timeline_marks['propagated'] - timeline_marks['revoked']) * 1000:.0f} ms"
    )
    for window in timeline.windows:
        inside = [
            o for o in outcomes if window.holds(o) and o.status != 200 and o.kind != "revoked"
        ]
        counts = Counter(o.status for o in inside)
        lines.append(
            f"  {at(window.start)} .. {at(window.end)}  {window.name}: "
            f"{dict(counts) or 'no errors'}"
        )
    no_answer = [o for o in outcomes if o.status == 0]
    lines.append(f"  requests without an answer: {len(no_answer)}")
    with capsys.disabled():
        print("\n".join(lines))
