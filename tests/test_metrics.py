"""Prometheus metrics, read back with prometheus_client's own text parser: on the proxy's port
behind metrics.access, or on an address of their own; numbers that match what a test did."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import ConfigError
from proxy.ops import MetricsListener, summary

from .conftest import S3Objects, bearer, build_config, config_dict, make_token

METRICS = {
    "enabled": True,
    "listen": "main",
    "path": "/_metrics",
    "access": {"claims": {"role": "ops"}},
}
OPS = bearer(make_token("ops-1", role="ops"))

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample by (name, labels), parsed by prometheus_client."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


async def scrape(client: Any, headers: dict[str, str] | None = None) -> Samples:
    response = await client.get("/_metrics", headers=OPS if headers is None else headers)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await response.text())


async def test_requests_bytes_and_s3_calls_match_what_was_asked(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint, metrics=METRICS))
    token = bearer(make_token())
    streamed = await client.get("/stream/photos/42", headers=token)
    await streamed.read()
    again = await client.get(
        "/stream/photos/42", headers={**token, "If-None-Match": streamed.headers["ETag"]}
    )
    assert again.status == 304
    for _ in range(3):
        redirected = await client.get("/photos/42", headers=token, allow_redirects=False)
        assert redirected.status == 302
    assert (await client.head("/stream/photos/404", headers=token)).status == 404

    m = await scrape(client)
    stream = {"route": "photo-stream", "delivery": "stream"}
    redirect = {"route": "employee-photos", "delivery": "redirect"}
    assert value(m, "proxy_requests_total", **stream, method="GET", status_class="2xx") == 1
    assert value(m, "proxy_requests_total", **stream, method="GET", status_class="3xx") == 1
    assert value(m, "proxy_requests_total", **stream, method="HEAD", status_class="4xx") == 1
    assert value(m, "proxy_requests_total", **redirect, method="GET", status_class="3xx") == 3
    assert value(m, "proxy_requests_total") == 6  # the scrape counts once it is answered
    assert value(m, "proxy_response_body_bytes_total", **stream) == len(s3.photo)
    assert value(m, "proxy_response_body_bytes_total", **redirect) == 0
    assert value(m, "proxy_not_modified_responses_total", **stream) == 1
    assert value(m, "proxy_time_to_first_byte_seconds_count", **stream) == 3
    assert value(m, "proxy_time_to_first_byte_seconds_count", **redirect) == 3
    assert value(m, "proxy_request_duration_seconds_count") == 6
    # Streamed requests asked S3 (the revalidation with a HEAD); presigning asks nothing.
    assert value(m, "proxy_s3_requests_total", operation="GetObject", outcome="ok") == 1
    assert value(m, "proxy_s3_requests_total", operation="HeadObject", outcome="ok") == 1
    assert value(m, "proxy_s3_requests_total", operation="HeadObject", outcome="not_found") == 1
    assert value(m, "proxy_s3_requests_total") == 3
    assert value(m, "proxy_s3_request_duration_seconds_count", operation="GetObject") == 1
    # Six requests and the scrape itself, checked before it renders.
    assert value(m, "proxy_token_verifications_total", kind="jwt", outcome="valid") == 7

    # The numbers the demo page and `bench` compare come from the same series.
    text = await (await client.get("/_metrics", headers=OPS)).text()
    numbers = summary(text_string_to_metric_families(text))
    assert (numbers["requests"], numbers["s3_requests"]) == (7, 3)
    by = numbers["by_delivery"]
    assert (by["stream"]["requests"], by["stream"]["bytes_sent"]) == (3, len(s3.photo))
    assert (by["stream"]["not_modified"], by["redirect"]["requests"]) == (1, 3)
    assert by["stream"]["mean_ttfb_ms"] > 0 and by["redirect"]["mean_ttfb_ms"] > 0


async def test_each_scrape_shows_every_request_answered_before_it_once(
    proxy, s3: S3Objects
) -> None:
    """Rule 3 of ops/metrics.py: requests and token checks are counted plainly and carried
    into their series by each scrape; a scrape right after requests shows all of them, the
    next shows them again (not twice), and no series appears before something counts in it."""
    client = await proxy(config_dict(s3.endpoint, metrics=METRICS))
    token = bearer(make_token())
    redirect = {"route": "employee-photos", "delivery": "redirect"}
    unrouted = {"route": "-", "delivery": "none"}
    assert (await client.get("/photos/42", headers=token, allow_redirects=False)).status == 302
    assert (await client.request("PROPFIND", "/photos/42")).status in (405, 501)
    first = await scrape(client)
    assert value(first, "proxy_requests_total", **redirect, status_class="3xx") == 1
    assert value(first, "proxy_requests_total", method="other") == 1
    assert value(first, "proxy_requests_total") == 2
    assert value(first, "proxy_token_verifications_total", outcome="valid") == 2  # + the scrape's
    assert value(first, "proxy_time_to_first_byte_seconds_count", **redirect) == 1
    # Nothing delivered on no route, and no 304 yet: those series are not there at all.
    names = {(name, labels) for name, labels in first}
    assert ("proxy_request_duration_seconds_count", frozenset(unrouted.items())) in names
    assert ("proxy_time_to_first_byte_seconds_count", frozenset(unrouted.items())) not in names
    assert not any(name == "proxy_not_modified_responses_total" for name, _ in names)

    for _ in range(2):
        assert (await client.get("/photos/42", headers=token, allow_redirects=False)).status == 302
    assert (await client.request("PROPFIND", "/photos/42")).status in (405, 501)
    assert (await client.get("/photos/42")).status == 401  # on the route, refused
    second = await scrape(client)
    assert value(second, "proxy_requests_total", **redirect, status_class="3xx") == 3
    assert value(second, "proxy_requests_total", method="other") == 2
    assert value(second, "proxy_requests_total", route="metrics", status_class="2xx") == 1
    assert value(second, "proxy_requests_total", **redirect, status_class="4xx") == 1
    assert value(second, "proxy_requests_total") == 7  # the first scrape counts once answered
    assert value(second, "proxy_token_verifications_total", outcome="valid") == 5
    assert value(second, "proxy_request_duration_seconds_count", **redirect) == 4
    assert value(second, "proxy_time_to_first_byte_seconds_count", **redirect) == 4
    assert value(second, "proxy_request_duration_seconds_count", **unrouted) == 2
    assert value(second, "proxy_request_duration_seconds_count") == 7
    assert value(second, "proxy_request_duration_seconds_sum") > value(
        first, "proxy_request_duration_seconds_sum"
    )


async def test_label_values_never_come_from_the_request(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint, metrics=METRICS))
    assert (await client.get("/no-such-route/secret-looking-path")).status == 404
    assert (await client.request("PROPFIND", "/photos/42")).status in (405, 501)
    m = await scrape(client)
    assert value(m, "proxy_requests_total", route="-", method="GET", status_class="4xx") == 1
    methods = {dict(labels).get("method") for (name, labels) in m if name == "proxy_requests_total"}
    assert "PROPFIND" not in methods
    everything = " ".join(f"{name}{sorted(labels)}" for name, labels in m)
    assert "secret-looking-path" not in everything and "no-such-route" not in everything


async def test_each_cache_counts_its_hits_and_misses(proxy, s3: S3Objects) -> None:
    data = config_dict(s3.endpoint, metrics=METRICS)
    data["routes"][1]["cache"] = {"max_age": 60}  # photo-stream, from memory
    client = await proxy(data)
    token = bearer(make_token())
    for _ in range(3):
        assert (await client.get("/stream/photos/42", headers=token)).status == 200
        assert (await client.get("/auto/q4.pdf", headers=token)).status == 200
        stable = await client.get("/stable/photos/42", headers=token, allow_redirects=False)
        assert stable.status == 302
    m = await scrape(client)

    def counts(cache: str) -> tuple[float, float]:
        return (
            value(m, "proxy_cache_hits_total", cache=cache),
            value(m, "proxy_cache_misses_total", cache=cache),
        )

    assert counts("object") == (2, 1)
    assert counts("metadata") == (2, 1)
    assert counts("link") == (2, 1)
    # One token, ten requests (the scrape's own token is another): one signature check each.
    assert counts("token") == (8, 2)


async def test_token_verifications_by_outcome(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint, metrics=METRICS))
    expired = bearer(make_token(ttl=-3600))
    forged = bearer(make_token(key="another-secret-" + "y" * 40))
    assert (await client.get("/photos/42", headers=expired)).status == 401
    assert (await client.get("/photos/42", headers=forged)).status == 401
    assert (await client.get("/photos/42", headers=forged)).status == 401
    m = await scrape(client)
    assert value(m, "proxy_token_verifications_total", kind="jwt", outcome="expired") == 1
    assert value(m, "proxy_token_verifications_total", kind="jwt", outcome="invalid") == 2


async def test_rate_limit_refusals_are_counted_by_route(proxy, s3: S3Objects) -> None:
    data = config_dict(s3.endpoint, metrics=METRICS)
    data["routes"][1]["rate_limit"] = {"per_client": {"rate": 0.001, "burst": 1}}
    client = await proxy(data)
    token = bearer(make_token())
    statuses = [(await client.get("/stream/photos/42", headers=token)).status for _ in range(3)]
    assert statuses == [200, 429, 429]
    m = await scrape(client)
    assert value(m, "proxy_rate_limited_total", route="photo-stream", limit="client") == 2


async def test_the_state_series_are_there_with_the_memory_backend(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint, metrics=METRICS))
    m = await scrape(client)
    assert value(m, "proxy_state_up") == 1
    assert value(m, "proxy_state_revocations") == 0
    assert value(m, "proxy_state_revocations_unconfirmed_seconds") == 0
    assert value(m, "proxy_state_errors_total") == 0
    assert value(m, "proxy_state_decisions_total") == 0
    labels = {
        (dict(have)["operation"], dict(have)["outcome"])
        for (n, have) in m
        if n == "proxy_state_errors_total"
    }
    assert ("rate_limits", "skipped") in labels  # every label set is there from the start


async def test_streams_and_s3_connections_in_use_are_gauges(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint, metrics=METRICS))
    admin = bearer(make_token(role="admin"))
    idle = await scrape(client)
    assert value(idle, "proxy_streams_in_flight") == 0
    # The head has arrived, the 48 MiB body is not read: the stream and its S3 connection
    # stay busy until the response is released.
    held = await client.get("/admin/exports/huge.bin", headers=admin)
    assert held.status == 200
    busy = await scrape(client)
    assert value(busy, "proxy_streams_in_flight") == 1
    assert value(busy, "proxy_s3_pool_connections_in_use") == 1
    assert value(busy, "proxy_s3_pool_waiting_requests") == 0
    assert value(busy, "proxy_requests_in_flight") == 2  # the held one and the scrape
    held.close()


async def test_metrics_are_off_by_default(proxy) -> None:
    client = await proxy()
    assert (await client.get("/metrics")).status == 404
    assert (await client.get("/_metrics")).status == 404


async def test_main_port_metrics_are_only_for_callers_the_access_rule_admits(
    proxy, s3: S3Objects
) -> None:
    client = await proxy(config_dict(s3.endpoint, metrics=METRICS))
    anonymous = await client.get("/_metrics")
    assert anonymous.status == 401
    assert "proxy_requests" not in await anonymous.text()
    employee = await client.get("/_metrics", headers=bearer(make_token(role="employee")))
    assert employee.status == 403
    assert "proxy_requests" not in await employee.text()
    assert (await client.get("/_metrics", headers=OPS)).status == 200
    assert (await client.post("/_metrics", headers=OPS)).status == 405


async def test_metrics_on_their_own_loopback_port(proxy, s3: S3Objects) -> None:
    """The listener `serve` starts for `metrics.listen`, on a port of its own: no token asked,
    nothing but metrics.path answered there, and the proxy's port does not answer it."""
    data = config_dict(s3.endpoint, metrics={"enabled": True, "listen": "127.0.0.1:0"})
    client = await proxy(data)
    gateway = client.server.gateway
    listener = MetricsListener("127.0.0.1", 0, "/metrics", gateway.telemetry.render)
    port = listener.start()
    try:
        token = bearer(make_token())
        assert (await client.get("/photos/42", headers=token, allow_redirects=False)).status == 302
        assert (await client.get("/metrics")).status == 404  # not on the proxy's port

        def fetch(path: str, method: str = "GET") -> tuple[int, str, bytes]:
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, response.headers["Content-Type"], response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers["Content-Type"], exc.read()

        status, content_type, body = await asyncio.to_thread(fetch, "/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        m = parse(body.decode())
        assert value(m, "proxy_requests_total", route="employee-photos", status_class="3xx") == 1
        assert (await asyncio.to_thread(fetch, "/other"))[0] == 404
        assert (await asyncio.to_thread(fetch, "/metrics", "POST"))[0] == 405
    finally:
        listener.stop()


def test_config_reloads_counter_exists_for_the_reload_path() -> None:
    from proxy.ops import Telemetry

    telemetry = Telemetry()
    telemetry.config_reloaded(ok=True)
    telemetry.config_reloaded(ok=False)
    telemetry.config_reloaded(ok=False)
    m = parse(telemetry.render().decode())
    assert value(m, "proxy_config_reloads_total", outcome="ok") == 1
    assert value(m, "proxy_config_reloads_total", outcome="failed") == 2


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        (
            {"enabled": True, "listen": "main", "path": "/_metrics"},
            r"metrics\.access: required with `listen: main`",
        ),
        (
            {"enabled": True, "access": "public"},
            r"metrics\.access: only applies with `listen: main`.*remove it",
        ),
        (
            {"path": "/_metrics", "access": "public"},
            r"metrics\.access: metrics are off; add `enabled: true`",
        ),
        (
            {"enabled": True, "listen": "localhost"},
            r"metrics\.listen: 'localhost' is not HOST:PORT; use e\.g\. 127\.0\.0\.1:9464",
        ),
        (
            {"enabled": True, "listen": "127.0.0.1:8080"},
            r"metrics\.listen: 127\.0\.0\.1:8080 is the proxy's own address",
        ),
        (
            {"enabled": True, "listen": "main", "path": "/healthz", "access": "public"},
            r"metrics\.path: /healthz is also health\.live_path",
        ),
        ({"enabled": True, "path": "metrics"}, r"metrics\.path: must be a fixed path"),
    ],
)
def test_metrics_config_mistakes_are_caught_at_load(metrics: dict[str, Any], message: str) -> None:
    data = config_dict(metrics=metrics)
    data["listen"] = {"host": "127.0.0.1", "port": 8080}
    with pytest.raises(ConfigError, match=message):
        build_config(data)


def test_both_metrics_modes_load() -> None:
    own = build_config(config_dict(metrics={"enabled": True})).settings.metrics
    assert (own.address, own.path, own.on_main_port) == (("127.0.0.1", 9464), "/metrics", False)
    v6 = build_config(config_dict(metrics={"enabled": True, "listen": "[::1]:9100"}))
    assert v6.settings.metrics.address == ("::1", 9100)
    main = build_config(config_dict(metrics=METRICS))
    assert main.settings.metrics.on_main_port and main.metrics_access is not None


def test_the_request_path_counts_exactly_what_prometheus_clients_own_calls_would() -> None:
    """Rule 2 of ops/metrics.py: the request path increments the children's values directly.
    Fed the same numbers, every series must read as Counter.inc and Histogram.observe give,
    bucket edges included (a value equal to a bound falls in that bound's bucket)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from proxy.ops.metrics import _LATENCY, Telemetry

    durations = [0.0, 0.0005, 0.00051, 0.001, 0.7, 30.0, 31.0, 1e-9, 2.5]
    telemetry = Telemetry()
    registry = CollectorRegistry()
    requests = Counter("r", "", ["route"], registry=registry).labels("x")
    duration = Histogram("d", "", ["route"], buckets=_LATENCY, registry=registry).labels("x")
    s3 = Histogram("s", "", ["op"], buckets=_LATENCY, registry=registry).labels("GetObject")
    for seconds in durations:
        telemetry.observe_request("x", "stream", "GET", 200, 10, seconds, seconds)
        telemetry.observe_s3("GetObject", "ok", seconds)
        requests.inc()
        duration.observe(seconds)
        s3.observe(seconds)
    telemetry.token_checked("jwt", "valid")

    def samples(families: Any, name: str, **labels: str) -> dict[str, float]:
        return {
            f"{sample.name}{sample.labels.get('le', '')}": sample.value
            for family in families
            for sample in family.samples
            if sample.name.startswith(name)
            and not sample.name.endswith("_created")
            and all(sample.labels.get(k) == v for k, v in labels.items())
        }

    ours = list(telemetry.collect())  # sampled first: rule 3 keeps the S3 calls plainly
    theirs = list(registry.collect())

    def renamed(found: dict[str, float], old: str, new: str) -> dict[str, float]:
        return {key.replace(old, new, 1): value for key, value in found.items()}

    assert renamed(
        samples(ours, "proxy_request_duration_seconds", route="x"),
        "proxy_request_duration_seconds",
        "d",
    ) == samples(theirs, "d")
    assert renamed(
        samples(ours, "proxy_s3_request_duration_seconds", operation="GetObject"),
        "proxy_s3_request_duration_seconds",
        "s",
    ) == samples(theirs, "s")
    assert samples(ours, "proxy_requests_total", route="x") == {
        "proxy_requests_total": len(durations)
    }
    assert samples(ours, "proxy_response_body_bytes_total", route="x") == {
        "proxy_response_body_bytes_total": 10 * len(durations)
    }
    assert samples(ours, "proxy_token_verifications_total", kind="jwt", outcome="valid") == {
        "proxy_token_verifications_total": 1
    }
    # The S3 calls are kept plainly and carried into their series by each sample (rule 3):
    # sampling again counts nothing twice.
    again = list(telemetry.collect())
    for found in (ours, again):
        assert samples(found, "proxy_s3_requests_total", operation="GetObject", outcome="ok") == {
            "proxy_s3_requests_total": len(durations)
        }
    assert samples(again, "proxy_s3_request_duration_seconds", operation="GetObject") == (
        samples(ours, "proxy_s3_request_duration_seconds", operation="GetObject")
    )
