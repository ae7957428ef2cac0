"""`routes[].upload` and upload methods: mistakes caught at load, naming the key and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError

from .conftest import build_config, config_dict

MIB = 1024 * 1024


def _with_route(**changes: Any) -> dict[str, Any]:
    data = config_dict("http://127.0.0.1:9000")
    route = {
        "name": "up",
        "match": "/up/{path:.+}",
        "bucket": "user-files",
        "key": "uploads/{path}",
        "delivery": "stream",
        "access": "authenticated",
        "methods": ["GET", "PUT"],
        "upload": {"max_bytes": 10 * MIB},
    }
    route.update(changes)
    data["routes"] = [route]
    return data


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(data)
    return caught.value.problems


def test_defaults() -> None:
    route = build_config(_with_route()).routes[0]
    upload = route.settings.upload
    assert upload is not None
    assert upload.overwrite is False
    assert upload.part_size == 8 * MIB
    assert upload.content_types is None
    assert route.upload_types is not None
    assert route.upload_types.allows("image/png")  # the route's inline types
    assert not route.upload_types.allows("text/html")


def test_content_types_with_wildcards() -> None:
    route = build_config(
        _with_route(upload={"max_bytes": 1, "content_types": ["image/*", "Text/CSV"]})
    ).routes[0]
    assert route.upload_types is not None
    assert route.upload_types.allows("image/png")
    assert route.upload_types.allows("text/csv; charset=utf-8")
    assert not route.upload_types.allows("text/plain")
    # A wildcard covers media, never active documents nor a type that is itself a pattern.
    for refused in ("image/svg+xml", "image/x-anything+xml", "image/*", "*/*"):
        assert not route.upload_types.allows(refused), refused


def test_active_types_pass_only_when_named() -> None:
    listed = ["image/*", "text/*", "image/svg+xml"]
    route = build_config(_with_route(upload={"max_bytes": 1, "content_types": listed})).routes[0]
    assert route.upload_types is not None
    assert route.upload_types.allows("image/svg+xml")
    assert route.upload_types.allows("text/csv")
    for refused in ("text/html", "text/xml", "text/javascript", "image/*", "text/*"):
        assert not route.upload_types.allows(refused), refused


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"upload": None},
            "routes[0] (up).upload: required when methods lists PUT; add e.g. upload:",
        ),
        ({"upload": {}}, "routes[0] (up).upload.max_bytes: required key is missing"),
        (
            {"upload": {"max_bytes": 1, "part_size": 4 * MIB}},
            "routes[0] (up).upload.part_size: Input should be greater than or equal to 5242880",
        ),
        (
            {"upload": {"max_bytes": 1, "content_types": ["html"]}},
            "routes[0] (up).upload.content_types: 'html' is not a media type",
        ),
        (
            {"upload": {"max_bytes": 100_000 * MIB}},
            "routes[0] (up).upload: max_bytes 104857600000 needs more than S3's 10000 parts",
        ),
        (
            {"upload": {"max_bytes": 5 * 1024 * 1024 * MIB + 1, "multipart": True}},
            "routes[0] (up).upload.max_bytes: Input should be less than or equal to 5497558138880",
        ),
        (
            {
                "sse_customer_key": "k" * 32,
                "upload": {"max_bytes": 1, "multipart": True},
            },
            "routes[0] (up).upload.multipart: an SSE-C route cannot take presigned multipart",
        ),
        ({"methods": ["GET"]}, "routes[0] (up).upload: the route takes no uploads; add PUT"),
        ({"delivery": "auto"}, "routes[0] (up).methods: PUT needs delivery stream"),
        (
            {"methods": ["DELETE"]},
            "routes[0] (up).methods[0]: Input should be 'GET', 'HEAD', 'PUT' or 'POST'",
        ),
        (
            {"delivery": "redirect", "sse_customer_key": "k" * 32, "methods": ["PUT"]},
            "routes[0] (up).methods: uploads to an SSE-C route must stream",
        ),
    ],
)
def test_upload_mistakes_name_the_key_and_the_fix(changes: dict[str, Any], expected: str) -> None:
    data = _with_route(**changes)
    if data["routes"][0]["upload"] is None:
        del data["routes"][0]["upload"]
    problems = _problems(data)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_multipart_routes_take_up_to_5_tib_without_a_streamed_part_size() -> None:
    """Presigned multipart uploads plan their own parts: only a streamed PUT needs max_bytes
    to fit 10,000 parts of part_size."""
    upload = {"max_bytes": 5 * 1024 * 1024 * MIB, "multipart": True}
    route = build_config(
        _with_route(delivery="redirect", methods=["GET", "POST"], upload=upload)
    ).routes[0]
    assert route.settings.upload is not None
    assert route.settings.upload.multipart is True
    problems = _problems(_with_route(upload=upload))  # the same on a streamed PUT route
    assert any("raise part_size to at least 549755814" in problem for problem in problems)


def test_multipart_is_off_by_default() -> None:
    upload = build_config(_with_route()).routes[0].settings.upload
    assert upload is not None
    assert upload.multipart is False
