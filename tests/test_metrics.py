"""The counters behind the method comparison, served at metrics.path."""

from __future__ import annotations

from .conftest import S3Objects, bearer, config_dict, make_token


async def test_counters_compare_the_two_methods(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint, metrics={"path": "/_metrics"}))
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
    snapshot = await (await client.get("/_metrics")).json()
    assert snapshot["requests"] == 5
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
