"""State shared through a real redis-server: two proxy processes (and, where the point is
Redis rather than processes, two gateways in this one) see the same revocations, rate
limits and stream caps; Redis stopping and coming back gives the documented behaviour."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from proxy.state.redisstate import STALE_AFTER

from .conftest import S3Objects, bearer, config_dict, make_token
from .redisd import RedisServer, free_port

REPO = Path(__file__).resolve().parent.parent
ADMIN = {"claims": {"role": "admin"}}
REVOKED = 'Bearer error="invalid_token", error_description="token revoked"'


def _shared(s3: S3Objects, redis: RedisServer, **sections: Any) -> dict[str, Any]:
    state = {"backend": "redis", "url": redis.url, **sections.pop("state", {})}
    return config_dict(s3.endpoint, state=state, admin={"access": ADMIN}, **sections)


@contextmanager
def _replica(
    data: dict[str, Any], tmp_path: Path, name: str, logs: list[str] | None = None
) -> Iterator[str]:
    """A `python -m proxy serve` process; yields its base URL. Its log goes to `logs` when
    it has stopped. Its output goes to files: a pipe nobody reads while the test runs would
    fill up (the access log) and stop the process mid-test."""
    port = free_port()
    data = {**data, "listen": {"host": "127.0.0.1", "port": port}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
            stdout=stdout,
            stderr=stderr,
            text=True,
            cwd=REPO,
        )
    try:
        deadline = time.monotonic() + 30
        while _get(f"http://127.0.0.1:{port}/public/42")[0] == 0:
            assert process.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "proxy did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        log = err.read_text()
        if logs is not None:
            logs.append(out.read_text() + log)
        assert "Traceback" not in log, log


@contextmanager
def _replicas(
    data: dict[str, Any], tmp_path: Path, logs: list[str] | None = None
) -> Iterator[tuple[str, str]]:
    with ExitStack() as stack:
        yield (
            stack.enter_context(_replica(data, tmp_path, "a", logs)),
            stack.enter_context(_replica(data, tmp_path, "b", logs)),
        )


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "revoke", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _get(
    url: str, token: str | None = None, method: str = "GET", body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body); status 0 when nothing answers."""
    headers = bearer(token) if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, {}, b""


def _until(check: Any, within: float) -> float:
    """Poll `check()` until true; the seconds it took (fails past `within`)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, "not within the bound"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_subject_revoked_through_one_replica_is_refused_by_both_within_a_second(
    s3: S3Objects, redis_server: RedisServer, tmp_path: Path
) -> None:
    old = make_token("alice", now=time.time() - 10)
    admin = make_token("root", role="admin")
    with _replicas(_shared(s3, redis_server), tmp_path) as (a, b):
        for base in (a, b):
            assert _get(f"{base}/stream/photos/42", old)[0] == 200
            assert _get(f"{base}/photos/42", old)[0] == 302
        assert _get(f"{a}/_admin/revocations", admin, "POST", {"sub": "alice"})[0] == 201

        def refused_everywhere() -> bool:
            return all(
                _get(f"{base}{path}", old)[0] == 401
                for base in (a, b)
                for path in ("/stream/photos/42", "/photos/42")
            )

        assert _until(refused_everywhere, within=1.0) < 1.0
        status, headers, _ = _get(f"{b}/photos/42", old)
        assert (status, headers["WWW-Authenticate"]) == (401, REVOKED)
        fresh = make_token("alice", now=time.time() + 2)  # a sign-in after the revocation
        for base in (a, b):
            assert _get(f"{base}/stream/photos/42", fresh)[0] == 200
            assert _get(f"{base}/photos/42", fresh)[0] == 302


def test_the_cli_writes_redis_and_every_replica_follows(
    s3: S3Objects, redis_server: RedisServer, tmp_path: Path
) -> None:
    data = _shared(s3, redis_server)
    lost = make_token("alice", now=time.time() - 10, jti="lost-laptop")
    kept = make_token("alice", now=time.time() - 10, jti="phone")
    config = tmp_path / "cli.yaml"
    audit = tmp_path / "audit.jsonl"
    config.write_text(yaml.safe_dump({**data, "audit": {"path": str(audit)}}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return _cli(config, *args)

    with _replicas(data, tmp_path) as (a, b):
        done = cli("--jti", "lost-laptop")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["jti"] == "lost-laptop"

        def both(token: str, status: int) -> bool:
            return all(_get(f"{base}/stream/photos/42", token)[0] == status for base in (a, b))

        assert _until(lambda: both(lost, 401), within=1.0) < 1.0
        assert both(kept, 200)
        listed = cli("--list")
        assert [json.loads(line)["jti"] for line in listed.stdout.splitlines()] == ["lost-laptop"]
        assert cli("--jti", "lost-laptop", "--undo").returncode == 0
        _until(lambda: both(lost, 200), within=1.0)
        assert cli("--jti", "lost-laptop", "--undo").returncode == 1  # no such revocation
    # No server saw those changes: the command recorded them, in a file of its own.
    trail = tmp_path / "audit.cli.jsonl"
    events = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [(e["event"], e["what"]) for e in events] == [
        ("revocation.added", {"jti": "lost-laptop"}),
        ("revocation.removed", {"jti": "lost-laptop"}),
    ]
    assert events[0]["by"].startswith("command line (") and events[0]["request_id"]
    verified = subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", str(trail)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr


def test_a_rate_limit_is_n_across_both_replicas_not_2n(
    s3: S3Objects, redis_server: RedisServer, tmp_path: Path
) -> None:
    limits = {"rate_limit": {"per_client": {"rate": 0.01, "burst": 6}}}
    with _replicas(_shared(s3, redis_server, limits=limits), tmp_path) as (a, b):
        # Starting the replicas spent some of the bucket (each polled /public/42): reset it.
        with redis.Redis.from_url(redis_server.url) as direct:
            direct.flushdb()
        statuses = [_get(f"{base}/public/42")[0] for _ in range(6) for base in (a, b)]
    assert statuses.count(200) == 6
    assert statuses.count(429) == 6


def test_with_redis_stopped_replicas_serve_on_their_copy_then_refuse_and_both_recover(
    s3: S3Objects, redis_server: RedisServer, tmp_path: Path
) -> None:
    # The exact bounds are checked on an injected clock (test_state_recovery.py); here, two
    # real processes show the whole course with a grace long enough for a busy machine.
    grace = 5
    limits = {"rate_limit": {"per_client": {"rate": 1000, "burst": 1000}}}
    data = _shared(s3, redis_server, limits=limits, state={"outage_grace": grace})
    bob, old = make_token("bob"), make_token("alice", now=time.time() - 10)
    admin = make_token("root", role="admin")
    logs: list[str] = []
    with _replicas(data, tmp_path, logs) as (a, b):
        assert _get(f"{a}/_admin/revocations", admin, "POST", {"sub": "alice"})[0] == 201
        _until(lambda: all(_get(f"{base}/photos/42", old)[0] == 401 for base in (a, b)), 1.0)
        redis_server.stop()
        # Inside state.outage_grace: served on each process's copy, which still refuses alice.
        for base in (a, b):
            assert _get(f"{base}/stream/photos/42", bob)[0] == 200
            assert _get(f"{base}/photos/42", old)[0] == 401
        # Nobody can revoke meanwhile: the admin endpoint says so and changes nothing.
        status, headers, body = _get(f"{b}/_admin/revocations", admin, "POST", {"sub": "bob"})
        assert (status, headers.get("Retry-After")) == (503, "1")
        assert json.loads(body) == {
            "error": "revocation not stored: the shared state (Redis) is unreachable; try again"
        }
        # Past the grace: tokens are refused, 503.
        for base in (a, b):
            _until(lambda: _get(f"{base}/photos/42", bob)[0] == 503, within=grace + 3)  # noqa: B023
        status, headers, _ = _get(f"{a}/photos/42", bob)
        assert (status, headers.get("Retry-After")) == (503, "1")
        # Rate limits let requests through, and no request waits past state.timeout.
        started = time.monotonic()
        assert _get(f"{a}/public/42")[0] == 200
        assert _get(f"{b}/public/42")[0] == 200
        assert time.monotonic() - started < 2 * (0.25 + 0.5)
        redis_server.start()  # empty: it kept nothing
        _until(
            lambda: all(_get(f"{base}/stream/photos/42", bob)[0] == 200 for base in (a, b)),
            within=5,
        )
        for base in (a, b):
            assert _get(f"{base}/photos/42", old)[0] == 401
            assert _get(f"{base}/stream/photos/42", bob)[0] == 200  # bob was never revoked
    for log in logs:
        assert "state backend redis unreachable" in log
        assert f"after state.outage_grace ({grace} s) tokens are refused (503)" in log
        assert "reachable again after" in log


def test_a_redis_restarted_empty_gets_the_revocations_back_from_the_replicas(
    s3: S3Objects, redis_server: RedisServer, tmp_path: Path
) -> None:
    data = _shared(s3, redis_server)
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump(data))
    lost = make_token("carol", now=time.time() - 10, jti="lost-laptop")
    old = make_token("alice", now=time.time() - 10)
    logs: list[str] = []
    with _replicas(data, tmp_path, logs) as (a, b):
        assert _cli(config, "--jti", "lost-laptop").returncode == 0
        assert _cli(config, "--sub", "alice").returncode == 0

        def refused_by(*bases: str) -> bool:
            return all(
                _get(f"{base}/stream/photos/42", token)[0] == 401
                for base in bases
                for token in (lost, old)
            )

        _until(lambda: refused_by(a, b), within=1.0)
        redis_server.stop()
        redis_server.start()  # without persistence: empty
        # Refused all along, and written back within a poll or two.
        for _ in range(10):
            assert refused_by(a, b)

        def listed() -> set[str]:
            lines = _cli(config, "--list").stdout.splitlines()
            return {json.loads(line).get("jti") or json.loads(line)["sub"] for line in lines}

        _until(lambda: listed() == {"lost-laptop", "alice"}, within=2.0)
        # A replica started after the loss refuses what was revoked before it.
        with _replica(data, tmp_path, "c") as c:
            assert refused_by(c)
            assert _get(f"{c}/stream/photos/42", make_token("alice"))[0] == 200  # a new sign-in
    warned = [
        line
        for log in logs
        for line in log.splitlines()
        if "lost revocations" in line or "changed its revocation history" in line
    ]
    assert len(warned) == 2, logs  # one line from each replica
    (written,) = [line for line in warned if "written back: " in line]
    assert "of the 2 this process holds it lacked 2" in written
    assert "jti lost-laptop" in written and "sub alice" in written


# --- in this process: two gateways sharing one Redis -------------------------------------


async def test_when_down_can_be_reversed(proxy, s3: S3Objects, redis_server: RedisServer) -> None:
    limits = {"rate_limit": {"per_client": {"rate": 1000, "burst": 1000}}}
    state = {"when_down": {"limits": "closed", "revocations": "open"}, "outage_grace": 0}
    client = await proxy(_shared(s3, redis_server, limits=limits, state=state))
    token = make_token("alice")
    assert (await client.get("/stream/photos/42", headers=bearer(token))).status == 200
    redis_server.stop()
    refused = await client.get("/public/42")
    assert refused.status == 503
    # For a second after a failed call, limits do not ask Redis again (a Redis that drops
    # packets would otherwise cost every request the whole timeout).
    assert (await client.get("/public/42")).status == 503
    assert client.server.gateway.state.counters.by_reason["rate limits: backing off"] == 1
    await asyncio.sleep(STALE_AFTER + 0.1)  # the copy goes stale on the real clock
    # The token is let through on the last copy; its rate limit, closed, refuses it.
    assert (await client.get("/stream/photos/42", headers=bearer(token))).status == 503
    counters = client.server.gateway.state.counters
    assert counters.limits_refused >= 2
    assert counters.revocations_let_through >= 1
    assert await client.server.gateway.state.check() is not None


async def test_inside_the_grace_readiness_is_degraded_not_failed_and_the_metrics_say_why(
    proxy, s3: S3Objects, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    from .conftest import Clock
    from .test_metrics import METRICS, scrape, value

    clock = Clock()  # the wall clock: readiness answers are cached by it
    client = await proxy(_shared(s3, redis_server, metrics=METRICS), clock=clock)
    state = client.server.gateway.state
    ticks = Clock(time.monotonic())  # staleness and the grace are measured on it
    state.monotonic = ticks
    token = bearer(make_token("alice", now=clock.now))
    # The detail goes to a caller that passes admin.access; anyone else sees the status.
    admin = bearer(make_token("root", role="admin", now=clock.now))
    assert await (await client.get("/readyz", headers=admin)).json() == {"status": "ready"}
    redis_server.stop()
    await _until_async(lambda: not state.is_up())
    ticks.now += 10
    clock.now += 60  # past health.cache: the next probe checks again
    assert await (await client.get("/readyz")).json() == {"status": "ready"}
    response = await client.get("/readyz", headers=admin)
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ready"
    (note,) = body["degraded"]
    assert note.startswith("redis: unreachable (")
    assert "after state.outage_grace (30 s) tokens are refused (503)" in note
    assert (await client.get("/stream/photos/42", headers=token)).status == 200
    m = await scrape(client)
    assert value(m, "proxy_state_up") == 0
    assert value(m, "proxy_state_revocations_unconfirmed_seconds") >= 10
    assert value(m, "proxy_state_errors_total", operation="revocations", outcome="failed") >= 1
    copy = {"check": "revocations", "decision": "unconfirmed_copy"}
    assert value(m, "proxy_state_decisions_total", **copy) >= 2  # the stream, the scrape

    ticks.now += 21  # past the grace
    clock.now += 60
    response = await client.get("/readyz", headers=admin)
    assert response.status == 503
    # Not even an admin's token can be vetted now (revocations unconfirmed): the detail is
    # in the log alone.
    assert await response.json() == {"status": "not ready"}
    (problem,) = [
        record.getMessage()
        for record in caplog.records
        if record.name == "proxy.health"
        and "not ready: redis: unreachable (" in record.getMessage()
    ]
    assert "past state.outage_grace (30 s): tokens are refused (503)" in problem
    assert (await client.get("/stream/photos/42", headers=token)).status == 503


async def test_stream_caps_hold_across_gateways_and_free_when_streams_end(
    proxy, s3: S3Objects, redis_server: RedisServer
) -> None:
    data = _shared(s3, redis_server, limits={"max_streams_per_subject": 1})
    first, second = await proxy(data), await proxy(data)
    token = make_token("alice")
    holding = await first.get(
        "/admin/exports/huge.bin", headers=bearer(make_token("alice", role="admin"))
    )
    assert holding.status == 200
    refused = await second.get("/stream/photos/42", headers=bearer(token))
    assert refused.status == 429
    assert (await second.get("/stream/photos/42", headers=bearer(make_token("bob")))).status == 200
    holding.close()  # the client goes away: the slot is released in Redis
    deadline = time.monotonic() + 5
    while (await second.get("/stream/photos/42", headers=bearer(token))).status != 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await second.server.gateway.state.check() is None


async def test_a_crashed_replicas_slots_expire_with_their_lease(
    proxy, s3: S3Objects, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.state import redisstate

    monkeypatch.setattr(redisstate, "LEASE", 0.3)
    data = _shared(s3, redis_server, limits={"max_streams_per_client": 1})
    client = await proxy(data)
    state = client.server.gateway.state
    lease = await state.acquire_stream("203.0.113.9", None)
    state._held.clear()  # as if the process died: nobody renews or releases it
    state.streams.release("203.0.113.9", None)
    with pytest.raises(Exception, match="streams per client"):
        await state.acquire_stream("203.0.113.9", None)
    await asyncio.sleep(0.4)
    again = await state.acquire_stream("203.0.113.9", None)
    await state.release_stream(again)
    assert lease.shared is not None


async def _until_async(check: Any, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.02)


async def test_changes_reach_other_processes_through_the_log_gaps_and_wipes_reload(
    s3: S3Objects, redis_server: RedisServer
) -> None:
    from proxy.state import create_state, new_revocation

    from .conftest import build_config

    settings = build_config(_shared(s3, redis_server)).settings
    writer, reader = create_state(settings), create_state(settings)
    await writer.open()
    await reader.open()
    old = {"sub": "alice", "iat": time.time() - 10}
    try:
        for n in range(3):
            await writer.revoke(new_revocation("jti", f"j{n}", None, time.time(), 3600, 30))
        await writer.revoke(new_revocation("sub", "alice", None, time.time(), 3600, 30))
        await _until_async(lambda: reader.revoked.covers(old, time.time()))
        assert len(reader.revoked) == 4
        await writer.unrevoke("jti", "j0", None)
        await _until_async(lambda: len(reader.revoked) == 3)

        # The log trimmed past what the reader has seen: it reloads the whole list.
        with redis.Redis.from_url(redis_server.url) as direct:
            for n in range(3, 6):
                await writer.revoke(new_revocation("jti", f"j{n}", None, time.time(), 3600, 30))
            direct.xtrim("s3proxy:revocations:log", maxlen=1, approximate=False)
        await _until_async(lambda: len(reader.revoked) == 6)

        # Redis lost its data: the copies are written back to it, not replaced by nothing.
        with redis.Redis.from_url(redis_server.url) as direct:
            direct.flushdb()
            await _until_async(lambda: direct.hlen("s3proxy:revocations") == 6)
        assert len(reader.revoked) == 6
        assert reader.revoked.covers(old, time.time())
    finally:
        await writer.close()
        await reader.close()


async def test_the_sign_api_spends_each_paths_buckets_in_one_call(
    proxy, s3: S3Objects, redis_server: RedisServer
) -> None:
    limits = {"rate_limit": {"per_client": {"rate": 0.01, "burst": 2}}}
    client = await proxy(_shared(s3, redis_server, limits=limits))
    token = make_token("alice")
    response = await client.post(
        "/_sign", json={"paths": ["/photos/1", "/photos/2", "/photos/3"]}, headers=bearer(token)
    )
    assert response.status == 200
    results = (await response.json())["results"]
    assert [r.get("status", 200) for r in results] == [200, 200, 429]
    assert results[2]["retry_after"] >= 1


async def test_a_reload_keeps_the_state_and_readiness_reports_redis(
    proxy, s3: S3Objects, redis_server: RedisServer, tmp_path: Path
) -> None:
    from proxy.reload import reload_gateway

    from .conftest import Clock

    clock = Clock()
    data = _shared(s3, redis_server, state={"outage_grace": 0})
    client = await proxy(data, clock=clock)
    old = make_token("alice", now=clock.now - 10)
    admin = make_token("root", role="admin", now=clock.now)
    assert (await client.get("/readyz")).status == 200
    revoked = await client.post("/_admin/revocations", json={"sub": "alice"}, headers=bearer(admin))
    assert revoked.status == 201

    # The reloaded handler checks against the same state: the revocation still holds, and
    # the new when_down applies.
    path = tmp_path / "config.yaml"
    state = {"when_down": {"revocations": "open"}, "outage_grace": 0}
    path.write_text(yaml.safe_dump(_shared(s3, redis_server, state=state)))
    assert reload_gateway(client.server.gateway, path) == "ok"
    assert (await client.get("/stream/photos/42", headers=bearer(old))).status == 401

    redis_server.stop()
    clock.now += 60  # past health.cache: the next probe checks again
    await _until_async(lambda: client.server.gateway.state.stale_for() is not None)
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {"status": "not ready"}  # no Redis error to the public
    response = await client.get("/readyz", headers=bearer(admin))
    problems = (await response.json())["problems"]
    assert any(problem.startswith("redis") for problem in problems), problems
    # when_down.revocations: open (reloaded): the last copy still refuses alice.
    assert (await client.get("/stream/photos/42", headers=bearer(old))).status == 401


async def test_a_revocation_on_one_gateway_stops_a_stream_on_another(
    proxy, s3: S3Objects, redis_server: RedisServer
) -> None:
    """Issue 21 item 8, across replicas: the stream's gateway learns of the revocation from
    Redis (its poll) and closes the connection."""
    from .conftest import HUGE_SIZE
    from .test_revocation import Download

    data = _shared(s3, redis_server)
    revoking, streaming = await proxy(data), await proxy(data)
    server = streaming.server
    download = await Download.start(
        server.host, server.port, "/admin/exports/huge.bin", make_token("alice", role="admin")
    )
    admin = bearer(make_token("root", role="admin"))
    revoked = await revoking.post("/_admin/revocations", json={"sub": "alice"}, headers=admin)
    assert revoked.status == 201
    old = {"sub": "alice", "iat": time.time() - 10}
    # The client reads nothing until the other gateway has the revocation (its poll).
    await _until_async(lambda: server.gateway.state.revoked.covers(old, time.time()))
    assert await download.read_to_end() < HUGE_SIZE
