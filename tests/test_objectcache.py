"""The in-memory cache of hot small objects (per-route `cache:`), with an injected clock."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.objectcache import ENTRY_OVERHEAD, ObjectCache
from proxy.ops import summary
from proxy.request import ObjectRef
from proxy.storage import ObjectMeta

from .conftest import Clock, S3Objects, bearer, config_dict, make_token
from .fakes import FakeStorage

pytestmark = pytest.mark.both_engines

T0 = 1_900_000_000.0
BODY = bytes(range(256)) * 40  # 10 KiB
KEY = ("hr-private", "employees/42/photo.jpg")
BIG_KEY = ("hr-private", "employees/43/photo.jpg")


def _cached_route(max_age: float = 5, max_object_bytes: int = 64 * 1024) -> dict[str, Any]:
    data = config_dict()
    data["routes"][1]["cache"] = {"max_age": max_age, "max_object_bytes": max_object_bytes}
    return data


def _gets(fake: FakeStorage) -> int:
    return len([call for call in fake.calls if call[0] in ("get", "head")])


async def _start(proxy: Any, clock: Clock) -> tuple[Any, FakeStorage, dict[str, str]]:
    fake = FakeStorage(objects={KEY: BODY, BIG_KEY: b"y" * 100_000})
    client = await proxy(_cached_route(), storage=fake, clock=clock)
    return client, fake, bearer(make_token(now=T0, ttl=3600))


async def test_repeat_requests_are_served_from_memory_until_max_age(proxy) -> None:
    clock = Clock(T0)
    client, fake, token = await _start(proxy, clock)
    for _ in range(5):
        response = await client.get("/stream/photos/42", headers=token)
        assert response.status == 200
        assert await response.read() == BODY
        assert response.headers["ETag"] == '"fake"'
        assert response.headers["Content-Length"] == str(len(BODY))
    assert _gets(fake) == 1
    clock.now += 5
    assert await (await client.get("/stream/photos/42", headers=token)).read() == BODY
    assert _gets(fake) == 2


async def test_answers_from_memory_carry_their_age(proxy) -> None:
    """RFC 9111 5.1: an answer from a stored copy says how old it is; the answer that
    fetched it from S3 says nothing (it is fresh from the origin)."""
    clock = Clock(T0)
    client, _fake, token = await _start(proxy, clock)
    first = await client.get("/stream/photos/42", headers=token)
    assert "Age" not in first.headers
    clock.now += 3.7
    for method, headers in [
        ("GET", {}),
        ("HEAD", {}),
        ("GET", {"Range": "bytes=0-9"}),
        ("GET", {"If-None-Match": '"fake"'}),
    ]:
        answer = await client.request(method, "/stream/photos/42", headers={**token, **headers})
        await answer.read()
        assert answer.status in (200, 206, 304)
        assert answer.headers["Age"] == "3", (method, headers)


def test_age_is_whole_seconds_since_the_fetch() -> None:
    clock = Clock(T0)
    cache = _cache(clock)
    ref = ObjectRef(*KEY)
    cache.put(ref, ObjectMeta(content_length=1), b"x")
    clock.now += 59.9
    entry = cache.get(ref, 3600)
    assert entry is not None
    assert cache.age(entry) == 59


async def test_authorization_is_checked_even_on_cached_objects(proxy) -> None:
    clock = Clock(T0)
    client, _fake, token = await _start(proxy, clock)
    assert (await client.get("/stream/photos/42", headers=token)).status == 200
    assert (await client.get("/stream/photos/42")).status == 401
    expired = bearer(make_token(now=T0 - 7200, ttl=60))
    assert (await client.get("/stream/photos/42", headers=expired)).status == 401


async def test_conditionals_and_ranges_are_answered_from_memory(proxy) -> None:
    clock = Clock(T0)
    client, fake, token = await _start(proxy, clock)
    await (await client.get("/stream/photos/42", headers=token)).read()
    not_modified = await client.get(
        "/stream/photos/42", headers={**token, "If-None-Match": 'W/"x", "fake"'}
    )
    assert not_modified.status == 304
    assert not_modified.headers["Cache-Control"] == "private, no-cache"
    part = await client.get("/stream/photos/42", headers={**token, "Range": "bytes=10-19"})
    assert part.status == 206
    assert await part.read() == BODY[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(BODY)}"
    tail = await client.get("/stream/photos/42", headers={**token, "Range": "bytes=-5"})
    assert await tail.read() == BODY[-5:]
    past = await client.get("/stream/photos/42", headers={**token, "Range": "bytes=99999-"})
    assert past.status == 416
    assert past.headers["Content-Range"] == f"bytes */{len(BODY)}"
    head = await client.head("/stream/photos/42", headers=token)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(BODY))
    assert _gets(fake) == 1


async def test_large_objects_are_streamed_not_cached(proxy) -> None:
    clock = Clock(T0)
    client, fake, token = await _start(proxy, clock)
    for _ in range(2):
        response = await client.get("/stream/photos/43", headers=token)
        assert await response.read() == b"y" * 100_000
    assert _gets(fake) == 2


async def test_cache_against_real_s3(proxy, s3: S3Objects) -> None:
    data = _cached_route()
    data["s3"]["endpoint_url"] = s3.endpoint
    data["metrics"] = {"enabled": True, "listen": "main", "path": "/_metrics", "access": "public"}
    client = await proxy(data)
    token = bearer(make_token())
    for _ in range(3):
        assert await (await client.get("/stream/photos/42", headers=token)).read() == s3.photo
    text = await (await client.get("/_metrics")).text()
    metrics = summary(text_string_to_metric_families(text))
    assert (metrics["s3_requests"], metrics["cache_hits"]) == (1, 2)


async def test_empty_objects_with_long_keys_are_not_cached_for_free(proxy) -> None:
    """Issue 11 item 8: 20,000 empty objects with long keys were cached at "0 bytes" while
    memory grew. Keys and per-entry overhead count, so the budget holds only a few."""
    ids = [f"{i:04d}" + "x" * 900 for i in range(200)]  # keys near S3's 1,024-byte limit
    fake = FakeStorage(objects={("hr-private", f"employees/{i}/photo.jpg"): b"" for i in ids})
    data = _cached_route(max_age=60)
    data["object_cache"] = {"max_bytes": 64 * 1024}
    client = await proxy(data, storage=fake, clock=Clock(T0))
    token = bearer(make_token(now=T0, ttl=3600))
    for employee in ids:
        response = await client.get(f"/stream/photos/{employee}", headers=token)
        assert (response.status, await response.read()) == (200, b"")
    assert _gets(fake) == 200
    cache = client.server.gateway._surfaces.downloads.objects  # white box: what the memory holds
    assert 0 < cache.size_bytes <= 64 * 1024
    each = len("hr-private") + len(f"employees/{ids[0]}/photo.jpg") + ENTRY_OVERHEAD
    assert len(cache) == 64 * 1024 // each
    # the first ones made room for the last: asking again goes to S3
    assert (await client.get(f"/stream/photos/{ids[0]}", headers=token)).status == 200
    assert _gets(fake) == 201
    assert (await client.get(f"/stream/photos/{ids[-1]}", headers=token)).status == 200
    assert _gets(fake) == 201


async def test_entries_past_every_routes_max_age_are_dropped(proxy) -> None:
    clock = Clock(T0)
    client, fake, token = await _start(proxy, clock)  # the only cached route: max_age 5
    assert (await client.get("/stream/photos/42", headers=token)).status == 200
    cache = client.server.gateway._surfaces.downloads.objects
    assert len(cache) == 1
    clock.now += 5
    fake_key = ("hr-private", "employees/44/photo.jpg")
    fake.objects[fake_key] = b"z" * 10
    assert (await client.get("/stream/photos/44", headers=token)).status == 200
    assert len(cache) == 1  # 42 is gone though nobody asked for it again
    assert cache.size_bytes == 10 + len("hr-private") + len(fake_key[1]) + ENTRY_OVERHEAD


def _cache(clock: Clock, max_bytes: int = 10_000, max_entries: int = 100) -> ObjectCache:
    return ObjectCache(max_bytes=max_bytes, max_entries=max_entries, max_age=3600, clock=clock)


def test_the_cache_stays_within_its_byte_budget() -> None:
    clock = Clock(T0)
    each = 400 + len("b") + len("a") + ENTRY_OVERHEAD
    cache = _cache(clock, max_bytes=3 * each - 1)
    meta = ObjectMeta(content_length=400)
    for name in "abc":
        cache.put(ObjectRef("b", name), meta, b"x" * 400)
    assert cache.size_bytes == 2 * each
    assert cache.get(ObjectRef("b", "a"), 60) is None  # the least recently used went first
    assert cache.get(ObjectRef("b", "c"), 60) is not None
    cache.put(ObjectRef("b", "huge"), meta, b"x" * 3 * each)
    assert cache.get(ObjectRef("b", "huge"), 60) is None


def test_keys_and_overhead_count_so_empty_objects_are_not_free() -> None:
    cache = _cache(Clock(T0), max_bytes=100_000, max_entries=1_000_000)
    long_key = "k" * 4000
    for i in range(1000):
        cache.put(ObjectRef("bucket", f"{long_key}{i}"), ObjectMeta(content_length=0), b"")
    assert 0 < cache.size_bytes <= 100_000
    assert len(cache) == 100_000 // (len("bucket") + 4003 + ENTRY_OVERHEAD)


def test_the_number_of_entries_is_capped() -> None:
    cache = _cache(Clock(T0), max_bytes=10**9, max_entries=10)
    for i in range(50):
        cache.put(ObjectRef("b", str(i)), ObjectMeta(content_length=1), b"x")
    assert len(cache) == 10
    assert cache.get(ObjectRef("b", "49"), 60) is not None  # the newest stayed
    assert cache.get(ObjectRef("b", "0"), 60) is None


def test_entries_no_route_can_serve_are_dropped() -> None:
    clock = Clock(T0)
    cache = ObjectCache(max_bytes=10**9, max_entries=100, max_age=60, clock=clock)
    for name in "abc":
        cache.put(ObjectRef("b", name), ObjectMeta(content_length=1), b"x")
    clock.now += 30
    cache.put(ObjectRef("b", "d"), ObjectMeta(content_length=1), b"x")
    assert len(cache) == 4
    clock.now += 30  # a, b, c are 60 s old: past every route's max_age
    cache.put(ObjectRef("b", "e"), ObjectMeta(content_length=1), b"x")
    assert len(cache) == 2  # d and e; nobody had to ask for a, b or c again
    clock.now += 30
    assert cache.get(ObjectRef("b", "d"), 3600) is None  # past the largest max_age: dropped too
    assert len(cache) == 1
    assert cache.size_bytes == 1 + 2 + ENTRY_OVERHEAD


def test_freshness_is_the_reading_routes_own() -> None:
    clock = Clock(T0)
    cache = _cache(clock)
    cache.put(ObjectRef("b", "k"), ObjectMeta(content_length=1), b"x")
    clock.now += 30
    assert cache.get(ObjectRef("b", "k"), 3600) is not None  # a route that allows an hour
    assert cache.get(ObjectRef("b", "k"), 5) is None  # a route that allows 5 s does not take it


async def test_a_hit_spends_a_stream_slot_but_holds_no_revocation_watch(proxy) -> None:
    """A hit is answered with no await in between, so it is not watched for a revocation
    (none could land); it still takes (and gives back) one of the caller's stream slots, and
    a fill from S3 is still watched."""
    clock = Clock(T0)
    client, _fake, token = await _start(proxy, clock)
    state = client.server.gateway.state
    taken: list[str] = []
    watched: list[bool] = []
    acquire, watch = state.acquire_stream, state.watch

    async def counted_acquire(client_address: str, subject: str | None) -> Any:
        taken.append(client_address)
        return await acquire(client_address, subject)

    def counted_watch(*args: Any, **kwargs: Any) -> Any:
        watched.append(True)
        return watch(*args, **kwargs)

    state.acquire_stream, state.watch = counted_acquire, counted_watch
    for _ in range(3):
        response = await client.get("/stream/photos/42", headers=token)
        assert (response.status, await response.read()) == (200, BODY)
    assert (len(taken), len(watched)) == (3, 1)  # the first request filled the cache
    assert state.streams.in_use == 0 and not state._watches
