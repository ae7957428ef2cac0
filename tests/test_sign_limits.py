"""The sign API costs what the GETs it stands for would (issue 11 item 7): each path spends
its route's rate-limit tokens, metadata lookups run a few at a time rather than one by one or
all at once, and a recent 404 is remembered instead of asked again. Over real HTTP, with S3
calls counted behind the storage seam."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from proxy.metacache import MISSING, MetadataCache
from proxy.request import ObjectRef
from proxy.storage import ObjectMeta

from .conftest import Clock, bearer, config_dict, make_token
from .fakes import FakeStorage

T0 = 1_900_000_000.0
AUTO = 7  # config_dict()'s "auto-exports" route: /auto/{path} -> reports/exports/{path}
PHOTOS = 0  # "employee-photos": redirect


def _objects(count: int) -> dict[tuple[str, str], bytes]:
    return {("reports", f"exports/{i}.pdf"): b"%PDF" for i in range(count)}


def _heads(storage: FakeStorage) -> int:
    return len([call for call in storage.calls if call[0] == "head"])


def _with_route_limit(index: int, **limits: Any) -> dict[str, Any]:
    data = config_dict()
    data["routes"][index]["rate_limit"] = limits
    return data


async def _sign(client: Any, paths: list[str], token: str) -> list[dict[str, Any]]:
    response = await client.post("/_sign", json={"paths": paths}, headers=bearer(token))
    assert response.status == 200
    results: list[dict[str, Any]] = (await response.json())["results"]
    assert [result["path"] for result in results] == paths
    return results


async def test_each_path_spends_its_routes_per_client_tokens(proxy) -> None:
    storage = FakeStorage(objects=_objects(10))
    data = _with_route_limit(AUTO, per_client={"rate": 1, "burst": 3})
    client = await proxy(data, storage=storage, clock=Clock(T0))
    paths = [f"/auto/{i}.pdf" for i in range(10)]
    results = await _sign(client, paths, make_token(now=T0))
    assert [result.get("url") for result in results[:3]] == paths[:3]  # small: streamed
    assert results[3:] == [
        {"path": path, "status": 429, "error": "too many requests", "retry_after": 1}
        for path in paths[3:]
    ]
    assert _heads(storage) == 3  # refused paths cost S3 nothing
    # and a GET finds the same bucket empty
    assert (await client.get("/auto/0.pdf", headers=bearer(make_token(now=T0)))).status == 429


async def test_a_route_exhausted_by_gets_signs_no_more_urls(proxy) -> None:
    storage = FakeStorage()
    data = _with_route_limit(PHOTOS, per_client={"rate": 0.5, "burst": 2})
    clock = Clock(T0)
    client = await proxy(data, storage=storage, clock=clock)
    token = make_token(now=T0)
    for _ in range(2):
        got = await client.get("/photos/42", headers=bearer(token), allow_redirects=False)
        assert got.status == 302
    limited, other = await _sign(client, ["/photos/42", "/stable/photos/42"], token)
    assert limited == {
        "path": "/photos/42",
        "status": 429,
        "error": "too many requests",
        "retry_after": 2,
    }
    assert other["url"].startswith("https://s3.example/hr-private/")  # another route's own
    clock.now += 2
    (refilled,) = await _sign(client, ["/photos/42"], token)
    assert "url" in refilled


async def test_each_path_spends_its_routes_per_subject_tokens(proxy) -> None:
    storage = FakeStorage(objects=_objects(4))
    data = _with_route_limit(AUTO, per_subject={"rate": 1, "burst": 2})
    client = await proxy(data, storage=storage, clock=Clock(T0))
    paths = [f"/auto/{i}.pdf" for i in range(4)]
    alice = await _sign(client, paths, make_token("alice", now=T0))
    assert [result.get("status") for result in alice] == [None, None, 429, 429]
    bob = await _sign(client, paths, make_token("bob", now=T0))
    assert [result.get("status") for result in bob] == [None, None, 429, 429]


@dataclass
class _CountingHeads(FakeStorage):
    """Records how many HEADs are in flight at once; each takes a few loop turns."""

    in_flight: int = 0
    most_in_flight: int = 0

    async def head(self, ref: ObjectRef) -> ObjectMeta:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for _ in range(5):
                await asyncio.sleep(0)  # yield to the loop (no timing involved)
            return await super().head(ref)
        finally:
            self.in_flight -= 1


async def test_lookups_run_eight_at_a_time_and_answers_keep_their_order(proxy) -> None:
    storage = _CountingHeads(objects=_objects(40))
    client = await proxy(config_dict(), storage=storage)
    # every other path is missing; each is a distinct key, so each needs a HEAD
    paths = [f"/auto/{i}.pdf" if i % 2 == 0 else f"/auto/missing-{i}.pdf" for i in range(40)]
    results = await _sign(client, paths, make_token())
    assert [result.get("status") for result in results] == [None, 404] * 20
    assert [result["url"] for result in results[::2]] == paths[::2]
    assert _heads(storage) == 40
    assert storage.most_in_flight == 8  # not one by one, and not all 40 at once


async def test_a_missing_key_is_asked_about_once_per_negative_ttl(proxy) -> None:
    storage = FakeStorage()
    clock = Clock(T0)
    client = await proxy(config_dict(), storage=storage, clock=clock)
    token = make_token(now=T0, ttl=3600)
    not_found = {"path": "/auto/gone.pdf", "status": 404, "error": "not found"}
    assert await _sign(client, ["/auto/gone.pdf"], token) == [not_found]
    assert await _sign(client, ["/auto/gone.pdf"], token) == [not_found]
    assert (await client.get("/auto/gone.pdf", headers=bearer(token))).status == 404
    assert _heads(storage) == 1
    # a page repeating the same missing path: at most one HEAD per concurrent lookup
    clock.now += 5  # metadata_cache.negative_ttl's default: forgotten
    assert await _sign(client, ["/auto/gone.pdf"] * 100, token) == [not_found] * 100
    assert 2 <= _heads(storage) <= 1 + 8


async def test_a_key_uploaded_after_a_404_is_found_once_the_404_expires(proxy) -> None:
    storage = FakeStorage()
    clock = Clock(T0)
    data = config_dict(metadata_cache={"negative_ttl": 2})
    client = await proxy(data, storage=storage, clock=clock)
    token = bearer(make_token(now=T0, ttl=3600))
    assert (await client.get("/auto/new.pdf", headers=token)).status == 404
    storage.objects[("reports", "exports/new.pdf")] = b"%PDF"
    assert (await client.get("/auto/new.pdf", headers=token)).status == 404  # remembered
    clock.now += 2
    assert (await client.get("/auto/new.pdf", headers=token)).status == 200


# MetadataCache, the no-I/O core


def test_a_404_is_remembered_for_negative_ttl_never_longer_than_ttl() -> None:
    clock = Clock(T0)
    cache = MetadataCache(max_entries=10, ttl=3, negative_ttl=5, clock=clock)
    cache.put_missing(ObjectRef("b", "k"))
    assert cache.get(ObjectRef("b", "k")) is MISSING
    clock.now += 3
    assert cache.get(ObjectRef("b", "k")) is None
    off = MetadataCache(max_entries=10, ttl=30, negative_ttl=0, clock=clock)
    off.put_missing(ObjectRef("b", "k"))
    assert off.get(ObjectRef("b", "k")) is None


def test_expired_entries_are_dropped_without_being_asked_for() -> None:
    clock = Clock(T0)
    cache = MetadataCache(max_entries=100, ttl=30, negative_ttl=5, clock=clock)
    for i in range(10):
        cache.put(ObjectRef("b", str(i)), ObjectMeta(content_length=i))
    cache.put_missing(ObjectRef("b", "gone"))
    clock.now += 30
    cache.put(ObjectRef("b", "fresh"), ObjectMeta(content_length=1))
    assert len(cache) == 1


async def test_answers_keep_their_order_across_route_kinds(proxy) -> None:
    storage = _CountingHeads(objects=_objects(3))
    client = await proxy(config_dict(), storage=storage)
    paths = ["/auto/0.pdf", "/photos/1", "/nowhere", "/auto/gone.pdf", "/auto/1.pdf", "/photos/2"]
    results = await _sign(client, paths, make_token())
    assert [result.get("status") for result in results] == [None, None, 404, 404, None, None]
    assert [result["url"] for result in (results[0], results[4])] == ["/auto/0.pdf", "/auto/1.pdf"]
    assert "/hr-private/employees/1/photo.jpg?" in results[1]["url"]
    assert "/hr-private/employees/2/photo.jpg?" in results[5]["url"]
