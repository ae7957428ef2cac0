"""The counters behind the method comparison, served at metrics.path."""

from __future__ import annotations

import pytest

from proxy.config import ConfigError

from .conftest import S3Objects, bearer, build_config, config_dict, make_token

METRICS = {"path": "/_metrics", "access": {"claims": {"role": "ops"}}}
OPS = bearer(make_token("ops-1", role="ops"))


async def test_counters_compare_the_two_methods(proxy, s3: S3Objects) -> None:
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
    snapshot = await (await client.get("/_metrics", headers=OPS)).json()
    assert snapshot["requests"] == 5  # requests before this one
    assert snapshot["s3_requests"] == 2  # the two streamed requests; presigning makes none
    assert snapshot["statuses"] == {"200": 1, "302": 3, "304": 1}
    stream, redirect = snapshot["by_delivery"]["stream"], snapshot["by_delivery"]["redirect"]
    assert (stream["requests"], stream["bytes_sent"], stream["not_modified"]) == (
        2,
        len(s3.photo),
        1,
    )
    assert (redirect["requests"], redirect["bytes_sent"]) == (3, 0)
    assert stream["mean_ttfb_ms"] > 0 and redirect["mean_ttfb_ms"] > 0


async def test_metrics_are_off_by_default(proxy) -> None:
    client = await proxy()
    assert (await client.get("/_metrics")).status == 404


async def test_metrics_are_only_for_callers_the_access_rule_admits(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint, metrics=METRICS))
    anonymous = await client.get("/_metrics")
    assert anonymous.status == 401
    assert "requests" not in await anonymous.text()
    employee = await client.get("/_metrics", headers=bearer(make_token(role="employee")))
    assert employee.status == 403
    assert (await client.get("/_metrics", headers=OPS)).status == 200


def test_metrics_path_without_an_access_rule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"metrics\.access: required with metrics\.path"):
        build_config(config_dict(metrics={"path": "/_metrics"}))
