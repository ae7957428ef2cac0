"""Rate limits (token buckets, injected clock), the concurrent-stream caps, header caps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from proxy.config import RateSettings
from proxy.limits import Overloaded, RateLimiter, StreamSlots, TooManyRequests

from .conftest import Clock, S3Objects, bearer, config_dict, make_token
from .fakes import FakeStorage
from .faulty_s3 import FaultyS3

T0 = 1_900_000_000.0


def test_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    clock = Clock(T0)
    limiter = RateLimiter(clock, max_buckets=100)
    rate = RateSettings(rate=2, burst=3)
    for _ in range(3):
        limiter.take(("r", "client", "a"), rate, "client")
    with pytest.raises(TooManyRequests) as caught:
        limiter.take(("r", "client", "a"), rate, "client")
    assert caught.value.headers["Retry-After"] == "1"
    limiter.take(("r", "client", "b"), rate, "client")  # other keys are unaffected
    clock.now += 0.5  # one token back at 2/s
    limiter.take(("r", "client", "a"), rate, "client")
    with pytest.raises(TooManyRequests):
        limiter.take(("r", "client", "a"), rate, "client")


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    limiter = RateLimiter(Clock(T0), max_buckets=100)
    slow = RateSettings(rate=0.1, burst=1)
    limiter.take(("k",), slow, "client")
    with pytest.raises(TooManyRequests) as caught:
        limiter.take(("k",), slow, "client")
    assert caught.value.headers["Retry-After"] == "10"


def test_the_bucket_table_is_bounded() -> None:
    limiter = RateLimiter(Clock(T0), max_buckets=100)
    rate = RateSettings(rate=1, burst=1)
    for i in range(1000):
        limiter.take(("client", str(i)), rate, "client")
    assert len(limiter._buckets) == 100


def _limited(s3: S3Objects, **route_limits: Any) -> dict[str, Any]:
    data = config_dict(s3.endpoint)
    data["routes"][1]["rate_limit"] = route_limits
    return data


async def test_per_client_limit_answers_429_with_retry_after(proxy, s3: S3Objects) -> None:
    clock = Clock(T0)
    client = await proxy(_limited(s3, per_client={"rate": 1, "burst": 2}), clock=clock)
    token = bearer(make_token(now=T0))
    statuses = [(await client.get("/stream/photos/42", headers=token)).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    refused = await client.get("/stream/photos/42", headers=token)
    assert refused.headers["Retry-After"] == "1"
    assert await refused.json() == {"error": "too many requests"}
    # other routes have their own (here: no) limit
    assert (await client.get("/photos/42", headers=token, allow_redirects=False)).status == 302
    clock.now += 1
    assert (await client.get("/stream/photos/42", headers=token)).status == 200


async def test_per_subject_limit_counts_each_subject(proxy, s3: S3Objects) -> None:
    clock = Clock(T0)
    client = await proxy(_limited(s3, per_subject={"rate": 1, "burst": 1}), clock=clock)
    alice, bob = bearer(make_token("alice", now=T0)), bearer(make_token("bob", now=T0))
    assert (await client.get("/stream/photos/42", headers=alice)).status == 200
    assert (await client.get("/stream/photos/42", headers=alice)).status == 429
    assert (await client.get("/stream/photos/42", headers=bob)).status == 200


async def test_global_limit_applies_to_every_route(proxy, s3: S3Objects) -> None:
    data = config_dict(s3.endpoint, limits={"rate_limit": {"per_client": {"rate": 1, "burst": 1}}})
    client = await proxy(data, clock=Clock(T0))
    assert (await client.get("/public/42")).status == 200
    assert (await client.get("/public/42")).status == 429


class _SlowStorage(FakeStorage):
    """Holds every stream open until released, to fill the stream slots."""

    def __init__(self) -> None:
        super().__init__(objects={("hr-private", "employees/42/photo.jpg"): b"x" * 4096})
        self.release = asyncio.Event()

    async def _chunks(self, body: bytes):  # type: ignore[no-untyped-def,override]
        yield body[:1024]
        await self.release.wait()
        yield body[1024:]


async def test_streams_past_the_cap_get_503(proxy) -> None:
    storage = _SlowStorage()
    client = await proxy(config_dict(limits={"max_streams": 2}), storage=storage)
    token = bearer(make_token())
    first = [await client.get("/stream/photos/42", headers=token) for _ in range(2)]
    refused = await client.get("/stream/photos/42", headers=token)
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    redirect = await client.get("/photos/42", headers=token, allow_redirects=False)
    assert redirect.status == 302  # redirects use no stream slot
    storage.release.set()
    for response in first:
        assert len(await response.read()) == 4096
    assert (await client.get("/stream/photos/42", headers=token)).status == 200


@asynccontextmanager
async def _client_at(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections come from `address` (any 127.x.y.z is loopback on Linux),
    so one test can play several clients."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def test_one_client_cannot_hold_more_than_its_share_of_streams(proxy) -> None:
    """Issue 11 item 6: one address with many slow downloads took every S3 connection. With
    the default cap (16), its 17th stream is refused with 429 while others are still served."""
    storage = _SlowStorage()
    client = await proxy(config_dict(), storage=storage)
    url = str(client.make_url("/public/42"))  # public: no subject, only the address counts
    async with _client_at("127.0.0.2") as greedy, _client_at("127.0.0.3") as other:
        held = [await greedy.get(url) for _ in range(16)]
        assert [response.status for response in held] == [200] * 16
        refused = await greedy.get(url)
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "1"
        assert await refused.json() == {"error": "too many requests"}
        served = await other.get(url)
        assert served.status == 200
        storage.release.set()
        for response in [*held, served]:
            assert len(await response.read()) == 4096
        assert client.server.gateway.streams.in_use == 0
        again = await greedy.get(url)  # its slots came back with its streams
        assert (again.status, len(await again.read())) == (200, 4096)


async def test_one_subject_cannot_hold_more_than_its_share_from_many_addresses(proxy) -> None:
    storage = _SlowStorage()
    client = await proxy(config_dict(), storage=storage)
    url = str(client.make_url("/stream/photos/42"))
    alice, bob = bearer(make_token("alice")), bearer(make_token("bob"))
    async with (
        _client_at("127.0.0.2") as first,
        _client_at("127.0.0.3") as second,
        _client_at("127.0.0.4") as third,
    ):
        held = [await first.get(url, headers=alice) for _ in range(8)]
        held += [await second.get(url, headers=alice) for _ in range(8)]
        assert [response.status for response in held] == [200] * 16
        refused = await third.get(url, headers=alice)
        assert (refused.status, refused.headers["Retry-After"]) == (429, "1")
        served = await third.get(url, headers=bob)
        assert served.status == 200
        storage.release.set()
        for response in [*held, served]:
            assert len(await response.read()) == 4096


async def test_stream_caps_are_configurable(proxy) -> None:
    storage = _SlowStorage()
    limits = {"max_streams_per_client": 1, "max_streams_per_subject": 2}
    client = await proxy(config_dict(limits=limits), storage=storage)
    held = await client.get("/public/42")
    assert (await client.get("/public/42")).status == 429
    storage.release.set()
    assert len(await held.read()) == 4096


def test_stream_slot_tables_forget_callers_with_nothing_in_flight() -> None:
    slots = StreamSlots(limit=10, per_client=2, per_subject=2)
    slots.acquire("a", "alice")
    slots.acquire("a", None)
    with pytest.raises(TooManyRequests):
        slots.acquire("a", "bob")  # address "a" has its 2
    slots.acquire("b", "alice")
    with pytest.raises(TooManyRequests):
        slots.acquire("c", "alice")  # alice has her 2, from two addresses
    assert slots.in_use == 3  # refusals took nothing
    for client, subject in (("a", "alice"), ("a", None), ("b", "alice")):
        slots.release(client, subject)
    assert (slots.in_use, slots._clients, slots._subjects) == (0, {}, {})


def test_the_process_wide_cap_is_503_not_429() -> None:
    slots = StreamSlots(limit=1, per_client=5, per_subject=5)
    slots.acquire("a", None)
    with pytest.raises(Overloaded):
        slots.acquire("b", None)


# --- every S3 call made for a caller counts against its budget (issue 21 item 3) ----------


@pytest.fixture
async def slow_heads(s3: S3Objects) -> AsyncIterator[FaultyS3]:
    """moto behind a FaultyS3 that never answers a HEAD (a slow S3 for metadata lookups)."""
    server = FaultyS3(upstream=s3.endpoint, hold={"HEAD"})
    await server.start()
    yield server
    await server.close()


BUDGETS = {
    # One subject from one address, the pool shared with another subject.
    "subject": ({"max_streams_per_subject": 3}, "127.0.0.1", "127.0.0.1"),
    # One address, whatever tokens it sends.
    "client": ({"max_streams_per_client": 3}, "127.0.0.2", "127.0.0.3"),
}
DROP = {
    "name": "drop",
    "match": "/drop/{path:.+}",
    "bucket": "user-files",
    "key": "drop/{claims.sub}/{path}",
    "delivery": "redirect",
    "access": "authenticated",
    "methods": ["PUT", "POST"],
    "upload": {  # overwrite: false
        "max_bytes": 64 * 1024 * 1024,
        "content_types": ["text/plain"],
        "multipart": True,
    },
}
ALICE = bearer(make_token("alice"))
Flood = list["asyncio.Future[aiohttp.ClientResponse]"]


def _flood(session: aiohttp.ClientSession, url: Any, kind: str) -> Flood:
    """Twelve S3 HEADs' worth of requests from one caller, each kind by another way in."""
    if kind == "auto":  # GETs on an `auto` route: a metadata HEAD each
        calls = [session.get(url(f"/auto/q{n}.pdf"), headers=ALICE) for n in range(12)]
    elif kind == "redirect upload":  # PUTs answered 307: an absence check each
        plain = {**ALICE, "Content-Type": "text/plain"}
        calls = [session.put(url(f"/drop/{n}.txt"), data=b"x", headers=plain) for n in range(12)]
    elif kind == "sign lookups":  # one batch of paths on an `auto` route
        paths = [f"/auto/q{n}.pdf" for n in range(12)]
        calls = [session.post(url("/_sign"), json={"paths": paths}, headers=ALICE)]
    elif kind == "sign multipart":  # multipart uploads begun, an absence check each
        calls = [
            session.post(
                url("/_sign"),
                json={
                    "multipart": [
                        {
                            "path": f"/drop/{n}.txt",
                            "size": 6 * 1024 * 1024,
                            "content_type": "text/plain",
                        }
                    ]
                },
                headers=ALICE,
            )
            for n in range(12)
        ]
    else:  # "sign uploads": upload forms, an absence check each, in concurrent batches
        form = {"path": "/drop/x.txt", "content_type": "text/plain"}
        calls = [
            session.post(
                url("/_sign"), json={"uploads": [{**form, "path": f"/drop/{n}"}]}, headers=ALICE
            )
            for n in range(12)
        ]
    return [asyncio.ensure_future(call) for call in calls]


@pytest.mark.parametrize(
    "kind", ["auto", "redirect upload", "sign lookups", "sign uploads", "sign multipart"]
)
@pytest.mark.parametrize("budget", sorted(BUDGETS))
async def test_one_caller_with_slow_heads_cannot_take_the_pool_from_another(
    proxy, slow_heads: FaultyS3, budget: str, kind: str
) -> None:
    """With S3 HEADs hanging, one caller's requests that each need a HEAD (a metadata lookup,
    an upload's absence check) took every pooled S3 connection, and another caller's stream
    got `503 busy` after s3.pool_timeout. Each HEAD now holds one of its caller's slots."""
    caps, attacker_address, victim_address = BUDGETS[budget]
    limits = {"max_streams_per_client": 100, "max_streams_per_subject": 100, **caps}
    data = config_dict(slow_heads.url, s3={"max_connections": 6, "pool_timeout": 1}, limits=limits)
    data["routes"].append(DROP)
    client = await proxy(data)
    attacker = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(attacker_address, 0))
    )
    victim = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(victim_address, 0)))
    flood: Flood = []
    try:
        flood = _flood(attacker, client.make_url, kind)
        async with asyncio.timeout(10):
            while slow_heads.held < 3:  # noqa: ASYNC110 - the state is in the fake S3
                await asyncio.sleep(0.01)
            served = await victim.get(
                client.make_url("/admin/exports/q4.pdf"),
                headers=bearer(make_token("bob", role="admin")),
            )
            assert served.status == 200, await served.text()
            assert await served.read() == b"%PDF-1.4 quarterly numbers\n"
        assert slow_heads.held == 3  # the caller's budget, never more
        for answered in [f.result() for f in flood if f.done()]:
            # Past its budget the caller is told so; a batch says it per entry.
            if kind in ("sign uploads", "sign multipart"):
                assert answered.status == 200
                (entry,) = (await answered.json())[kind.split()[1]]
                assert (entry["status"], entry["retry_after"]) == (429, 1)
            else:
                assert answered.status == 429
    finally:
        for pending in flood:
            pending.cancel()
        await attacker.close()
        await victim.close()
