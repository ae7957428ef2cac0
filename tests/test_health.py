"""Liveness and readiness probes over real sockets: no auth, no log line, one shared check per
burst, and readiness that follows S3, credentials and JWKS keys (time moved by the clock)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import ConfigError
from proxy.presign import Credentials

from .conftest import Clock, S3Objects, bearer, build_config, config_dict, make_token
from .fakes import FakeStorage
from .faulty_s3 import FaultyS3
from .test_jwks import Provider, _jwks_config, new_key, provider  # noqa: F401 - the fixture

T0 = 1_900_000_000.0


@pytest.fixture
async def faulty(s3: S3Objects) -> AsyncIterator[FaultyS3]:
    server = FaultyS3(upstream=s3.endpoint)
    await server.start()
    yield server
    await server.close()


async def _probe(client: Any, path: str = "/readyz") -> tuple[int, dict[str, Any]]:
    response = await client.get(path)
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await response.json()
    assert "problems" not in body  # an anonymous probe learns the status only
    return response.status, body


OPERATOR = {"access": {"claims": {"role": "admin"}}}


def _operated(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with admin.access set: callers passing it see what is wrong."""
    return {**data, "admin": OPERATOR}


async def _details(client: Any, now: float | None = None) -> tuple[int, dict[str, Any]]:
    """The probe as an operator (a token that passes admin.access) asks it."""
    token = make_token("root", role="admin", now=now)
    response = await client.get("/readyz", headers=bearer(token))
    body: dict[str, Any] = await response.json()
    return response.status, body


async def test_liveness_needs_no_token_and_no_s3(proxy) -> None:
    storage = FakeStorage()
    client = await proxy(storage=storage)
    assert await _probe(client, "/healthz") == (200, {"status": "ok"})
    assert (await client.head("/healthz")).status == 200
    assert storage.calls == []


async def test_ready_against_real_s3(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint))
    assert await _probe(client) == (200, {"status": "ready"})


async def test_readiness_follows_s3_away_and_back(proxy, s3: S3Objects, faulty: FaultyS3) -> None:
    clock = Clock(T0)
    data = _operated(config_dict(faulty.url, s3={"connect_timeout": 0.5, "read_timeout": 0.5}))
    client = await proxy(data, clock=clock)
    assert (await _probe(client))[0] == 200
    buckets = {"hr-private", "reports", "user-files"}
    # One ListObjectsV2 per bucket, however many routes share it.
    assert sorted(faulty.paths) == sorted(f"GET /{bucket}/" for bucket in buckets)

    faulty.mode = "refuse"
    assert (await _probe(client))[0] == 200  # within health.cache: the last answer stands
    clock.now += 5
    assert await _probe(client) == (503, {"status": "not ready"})
    status, body = await _details(client, clock.now)
    assert status == 503 and body["status"] == "not ready"
    assert sorted(body["problems"]) == sorted(
        f"bucket {bucket}: S3 unreachable (UpstreamClosed)" for bucket in buckets
    )
    faulty.mode = "error"
    clock.now += 5
    status, body = await _details(client, clock.now)
    assert status == 503
    assert "bucket reports: S3 answered 500 InternalError" in body["problems"]

    faulty.mode = "ok"
    clock.now += 5
    assert await _probe(client) == (200, {"status": "ready"})


async def test_a_burst_of_probes_shares_one_check(proxy) -> None:
    clock = Clock(T0)
    storage = FakeStorage()
    client = await proxy(storage=storage, clock=clock)
    answers = await asyncio.gather(*(_probe(client) for _ in range(20)))
    assert {status for status, _ in answers} == {200}
    checked = [call for call in storage.calls if call[0] == "check_bucket"]
    assert sorted(bucket for _, bucket, _ in checked) == ["hr-private", "reports", "user-files"]
    clock.now += 4.9
    await _probe(client)
    assert len([call for call in storage.calls if call[0] == "check_bucket"]) == 3
    clock.now += 0.1
    await _probe(client)
    assert len([call for call in storage.calls if call[0] == "check_bucket"]) == 6


async def test_a_missing_bucket_is_named_to_an_operator_only(
    proxy, s3: S3Objects, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 21 item 6: an anonymous probe on the public port learns the status, not the
    bucket names or S3's errors; the log and a caller passing admin.access do."""
    data = _operated(config_dict(s3.endpoint))
    data["routes"][0]["bucket"] = "no-such-bucket"
    client = await proxy(data)
    with caplog.at_level(logging.WARNING, logger="proxy.health"):
        response = await client.get("/readyz")
        assert response.status == 503
        text = await response.text()
        assert "no-such-bucket" not in text and "hr-private" not in text
        assert await response.json() == {"status": "not ready"}
    assert "bucket no-such-bucket: bucket does not exist" in caplog.text
    # A token that does not pass admin.access, or a bad one, sees what anyone sees.
    for headers in (bearer(make_token("alice")), bearer("not-a-token")):
        refused = await client.get("/readyz", headers=headers)
        assert await refused.json() == {"status": "not ready"}
    status, body = await _details(client)
    assert (status, body["problems"]) == (503, ["bucket no-such-bucket: bucket does not exist"])


async def test_without_admin_access_no_one_sees_the_problems(proxy, s3: S3Objects) -> None:
    data = config_dict(s3.endpoint)
    data["routes"][0]["bucket"] = "no-such-bucket"
    client = await proxy(data)
    assert await _details(client) == (503, {"status": "not ready"})


async def test_access_denied_is_ready_but_a_refused_signature_is_not(
    proxy, faulty: FaultyS3
) -> None:
    """S3 checks the signature before the permission: AccessDenied proves the credentials are
    good (the proxy needs s3:GetObject, not s3:ListBucket); a refused signature does not."""
    clock = Clock(T0)
    client = await proxy(_operated(config_dict(faulty.url)), clock=clock)
    faulty.mode = "answer"
    faulty.answer = (403, "AccessDenied")
    assert (await _probe(client))[0] == 200
    for answer in ((403, "SignatureDoesNotMatch"), (403, "InvalidAccessKeyId")):
        faulty.answer = answer
        clock.now += 5
        status, body = await _details(client, clock.now)
        assert status == 503
        assert f"bucket reports: S3 answered 403 {answer[1]}" in body["problems"]
    faulty.answer = (301, "PermanentRedirect")
    clock.now += 5
    status, body = await _details(client, clock.now)
    assert (
        "bucket reports: S3 redirected: the bucket is in another region than s3.region"
        in (body["problems"])
    )


async def test_missing_credentials_are_not_ready(
    proxy, s3: S3Objects, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    client = await proxy(_operated(config_dict(s3.endpoint)))
    status, body = await _details(client)
    assert status == 503
    assert "aws credentials: none resolved from the standard chain" in body["problems"][0]
    assert "testing" not in str(body)


async def test_readiness_waits_for_jwks_keys(
    proxy,
    s3: S3Objects,
    provider: Provider,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(T0)
    provider.keys = [new_key()]
    provider.up = False
    data = _jwks_config(s3, provider, jwks={"cache_ttl": 600, "min_refresh_interval": 10})
    client = await proxy(data, clock=clock)
    with caplog.at_level(logging.WARNING, logger="proxy.health"):
        assert await _probe(client) == (503, {"status": "not ready"})
    assert f"jwks: no keys loaded from {provider.url}" in caplog.text
    provider.up = True
    clock.now += 5  # a new check, but the provider is not asked again this soon
    assert (await _probe(client))[0] == 503
    assert len(provider.hits) == 1
    clock.now += 5
    assert await _probe(client) == (200, {"status": "ready"})
    assert len(provider.hits) == 2


async def test_a_draining_proxy_is_not_ready_at_once(proxy) -> None:
    storage = FakeStorage()
    client = await proxy(storage=storage)
    client.server.gateway.draining = True
    assert await _probe(client) == (503, {"status": "draining"})
    assert storage.calls == []
    assert (await _probe(client, "/healthz"))[0] == 200  # alive while it drains


async def test_probes_take_get_only(proxy) -> None:
    client = await proxy(storage=FakeStorage())
    for path in ("/healthz", "/readyz"):
        response = await client.post(path)
        assert response.status == 405
        assert response.headers["Allow"] == "GET, HEAD"


async def test_probes_are_neither_logged_nor_counted(
    proxy, s3: S3Objects, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = {"enabled": True, "listen": "main", "access": "public"}
    client = await proxy(config_dict(s3.endpoint, metrics=metrics))
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        for _ in range(5):
            assert (await client.get("/healthz")).status == 200
            assert (await client.get("/readyz")).status == 200
        assert not [r for r in caplog.records if r.name == "proxy.access"]
        token = bearer(make_token())
        assert (await client.get("/photos/42", headers=token, allow_redirects=False)).status == 302
        assert len([r for r in caplog.records if r.name == "proxy.access"]) == 1
    text = await (await client.get("/metrics")).text()
    requests = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "proxy_requests_total"
    )
    assert requests == 1


async def test_probe_paths_are_configurable_and_can_be_turned_off(proxy) -> None:
    data = config_dict(health={"live_path": "/_live", "ready_path": None})
    client = await proxy(data, storage=FakeStorage())
    assert (await client.get("/_live")).status == 200
    assert (await client.get("/healthz")).status == 404
    assert (await client.get("/readyz")).status == 404


async def test_readiness_after_credentials_come_back(proxy) -> None:
    """FakeStorage raising on credentials() stands in for a chain that resolves nothing."""
    from proxy.errors import UpstreamError

    clock = Clock(T0)

    class NoCredentials(FakeStorage):
        missing = True

        async def credentials(self) -> Credentials:
            if self.missing:
                raise UpstreamError("presign: no AWS credentials found in the standard chain")
            return self.signing_credentials

    storage = NoCredentials()
    client = await proxy(storage=storage, clock=clock)
    assert (await _probe(client))[0] == 503
    storage.missing = False
    clock.now += 5
    assert (await _probe(client))[0] == 200


@pytest.mark.parametrize(
    ("health", "message"),
    [
        ({"live_path": "healthz"}, r"health\.live_path: must be a fixed path"),
        ({"ready_path": "/healthz"}, r"health\.ready_path: /healthz is also health\.live_path"),
        ({"timeout": 0}, r"health\.timeout: Input should be greater than 0"),
    ],
)
def test_health_config_mistakes_are_caught_at_load(health: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(config_dict(health=health))
