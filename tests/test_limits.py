"""Rate limits (token buckets, injected clock), the concurrent-stream cap, header caps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.config import RateSettings
from proxy.limits import RateLimiter, TooManyRequests

from .conftest import Clock, S3Objects, bearer, config_dict, make_token
from .fakes import FakeStorage

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
