"""Unit tests for proxy.routing: pattern compilation, raw-path matching, key templates, Router."""

from __future__ import annotations

import re

import pytest

from proxy.errors import BadRequest, Forbidden
from proxy.routing import (
    MATCHES_KEPT,
    MAX_PARAM_LENGTH,
    PATH_KEPT_CHARS,
    KeyTemplate,
    Match,
    Router,
    TemplateError,
    compile_pattern,
    compile_template,
)

ONE = compile_pattern("/photos/{id}")
REST = compile_pattern("/files/{path:.+}")
BOTH = compile_pattern("/users/{user}/albums/{path:.+}")


# compile_pattern


def test_single_segment_placeholder() -> None:
    assert ONE.params == ("id",)
    assert ONE.multi_segment == frozenset()
    assert ONE.match("/photos/42") == {"id": "42"}
    assert ONE.match("/photos/42/extra") is None
    assert ONE.match("/photos/") is None
    assert ONE.match("/photos") is None


def test_rest_of_path_placeholder() -> None:
    assert REST.params == ("path",)
    assert REST.multi_segment == frozenset({"path"})
    assert REST.match("/files/a/b/c.txt") == {"path": "a/b/c.txt"}
    assert REST.match("/files/") is None


def test_several_placeholders_keep_their_order() -> None:
    assert BOTH.params == ("user", "path")
    assert BOTH.multi_segment == frozenset({"path"})
    assert BOTH.match("/users/alice/albums/trip/1.jpg") == {"user": "alice", "path": "trip/1.jpg"}
    assert BOTH.match("/users/alice/bob/albums/x") is None


def test_custom_regex_restricts_the_match() -> None:
    pattern = compile_pattern("/orders/{id:[0-9]+}.json")
    assert pattern.match("/orders/123.json") == {"id": "123"}
    assert pattern.match("/orders/abc.json") is None
    assert pattern.multi_segment == frozenset()


def test_custom_regex_may_contain_a_brace_quantifier() -> None:
    pattern = compile_pattern(r"/codes/{code:\d{3}}")
    assert pattern.params == ("code",)
    assert pattern.match("/codes/123") == {"code": "123"}
    assert pattern.match("/codes/1234") is None


def test_literal_parts_are_not_regex() -> None:
    pattern = compile_pattern("/a.b/{id}")
    assert pattern.match("/a.b/1") == {"id": "1"}
    assert pattern.match("/aXb/1") is None


def test_pattern_without_placeholders_matches_only_itself() -> None:
    pattern = compile_pattern("/health")
    assert pattern.params == ()
    assert pattern.match("/health") == {}
    assert pattern.match("/healthz") is None


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("photos/{id}", "must start with '/'"),
        ("", "must start with '/'"),
        ("/a/{id}/b/{id}", "appears twice"),
        ("/a/{id:[0-9}", "invalid regex"),
        ("/a/{id:(x}", "invalid regex"),
        ("/a/{id", "unbalanced"),
        ("/a/id}", "unbalanced"),
        ("/a/{id}}", "unbalanced"),
        ("/a/{{id}", "unbalanced"),
        ("/a/{}", "unbalanced"),
        ("/a/{bad name}", "unbalanced"),
        ("/a/{1id}", "unbalanced"),
    ],
)
def test_compile_pattern_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        compile_pattern(source)


def test_template_error_is_a_value_error() -> None:
    assert issubclass(TemplateError, ValueError)


def test_regex_invalid_once_embedded_is_a_template_error() -> None:
    with pytest.raises(TemplateError):
        compile_pattern("/a/{id:(?i)abc}")


def test_custom_regex_spanning_segments_is_multi_segment() -> None:
    pattern = compile_pattern(r"/img/{path:.+\.png}")
    assert pattern.match("/img/a/b.png") == {"path": "a/b.png"}


# PathPattern.match on raw, percent-encoded paths


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/photos/caf%C3%A9", "café"),
        ("/photos/a%20b", "a b"),
        ("/photos/a+b", "a+b"),
        ("/photos/100%25", "100%"),
        ("/photos/%7Euser", "~user"),
        ("/photos/..x", "..x"),
        ("/photos/x..", "x.."),
        ("/photos/...", "..."),
        ("/photos/.hidden", ".hidden"),
        ("/photos/%zz", "%zz"),
    ],
)
def test_single_segment_param_is_decoded(raw: str, expected: str) -> None:
    assert ONE.match(raw) == {"id": expected}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/files/a%2Fb", "a/b"),
        ("/files/a%2fb/c", "a/b/c"),
        ("/files/dir/caf%C3%A9.txt", "dir/café.txt"),
        ("/files/%252e%252e", "%2e%2e"),
        ("/files/a/%252e%252e/b", "a/%2e%2e/b"),
        ("/files/%252F", "%2F"),
    ],
)
def test_rest_param_is_decoded_once(raw: str, expected: str) -> None:
    assert REST.match(raw) == {"path": expected}


def test_double_encoded_dots_are_a_literal_key_not_traversal() -> None:
    assert ONE.match("/photos/%252e%252e") == {"id": "%2e%2e"}


@pytest.mark.parametrize(
    "raw",
    [
        "/photos/..",
        "/photos/.",
        "/photos/%2e%2e",
        "/photos/%2E%2e",
        "/photos/%2E%2E",
        "/photos/.%2e",
        "/photos/%2e",
        "/photos/a%2Fb",
        "/photos/a%2fb",
        "/photos/%2F",
        "/photos/a%5Cb",
        "/photos/a%5cb",
        "/photos/a\\b",
        "/photos/a%00b",
        "/photos/a%0d%0aSet-Cookie:x",
        "/photos/a%0Ab",
        "/photos/a%09b",
        "/photos/a%7Fb",
        "/photos/a%C2%85b",  # NEL, a C1 control
        "/photos/invoice%E2%80%AEfdp.exe",  # right-to-left override disguising an extension
        "/photos/%c0%ae",
        "/photos/%c0%ae%c0%ae",
        "/photos/%ff",
        "/photos/%C3",
    ],
)
def test_unsafe_single_segment_param_is_bad_request(raw: str) -> None:
    with pytest.raises(BadRequest):
        ONE.match(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "/files/..",
        "/files/a/../b",
        "/files/a/..",
        "/files/./a",
        "/files/a/./b",
        "/files/a/%2e%2e/b",
        "/files/a/%2E%2e/b",
        "/files/%2e%2e%2fsecret",
        "/files/%2e%2e%2Fsecret",
        "/files/a/%2e/b",
        "/files/a//b",
        "/files//a",
        "/files/a/",
        "/files/a%2F%2Fb",
        "/files/a%2F",
        "/files/a\\..\\b",
        "/files/a%5C..%5Cb",
        "/files/a%00.txt",
        "/files/a%0d%0ab",
        "/files/a/%c0%ae%c0%ae/b",
    ],
)
def test_unsafe_rest_param_is_bad_request(raw: str) -> None:
    with pytest.raises(BadRequest):
        REST.match(raw)


def test_bad_request_reasons_name_the_failed_check() -> None:
    cases = {
        "/photos/%c0%ae": "not valid UTF-8",
        "/photos/a%2Fb": "'/' where one segment is expected",
        "/photos/%2e%2e": "'..' segment",
        "/photos/a%00": "control character",
        "/photos/a%5Cb": "backslash",
    }
    for raw, reason in cases.items():
        with pytest.raises(BadRequest) as caught:
            ONE.match(raw)
        assert reason in caught.value.reason, raw
        assert caught.value.status == 400


def test_param_length_limit_is_in_encoded_bytes() -> None:
    assert ONE.match("/photos/" + "a" * MAX_PARAM_LENGTH) == {"id": "a" * MAX_PARAM_LENGTH}
    with pytest.raises(BadRequest, match="too long"):
        ONE.match("/photos/" + "a" * (MAX_PARAM_LENGTH + 1))
    # 513 x 2-byte UTF-8 character: 513 characters but 1026 bytes.
    with pytest.raises(BadRequest, match="too long"):
        ONE.match("/photos/" + "%C3%A9" * 513)
    with pytest.raises(BadRequest, match="too long"):
        REST.match("/files/" + "/".join(["abcdefg"] * 200))


def test_no_match_returns_none_before_any_decoding() -> None:
    # Values that would be refused if captured are irrelevant when the path does not match.
    assert ONE.match("/other/%2e%2e") is None
    assert compile_pattern("/n/{id:[0-9]+}").match("/n/%2e%2e") is None


# compile_template and KeyTemplate.render


def test_template_with_params() -> None:
    template = compile_template("employees/{employee_id}/photo.jpg")
    assert template.params == {"employee_id"}
    assert template.claims == set()
    assert template.render({"employee_id": "42"}, None) == "employees/42/photo.jpg"


def test_template_with_claim_and_param() -> None:
    template = compile_template("users/{claims.sub}/{path}")
    assert isinstance(template, KeyTemplate)
    assert template.params == {"path"}
    assert template.claims == {"sub"}
    assert template.render({"path": "a/b.txt"}, {"sub": "alice"}) == "users/alice/a/b.txt"


def test_template_literals_and_refs_alternate() -> None:
    template = compile_template("{a}-{claims.b}")
    assert template.literals == ("", "-", "")
    assert template.refs == (("param", "a"), ("claim", "b"))
    assert template.render({"a": "x"}, {"b": "y"}) == "x-y"


def test_template_without_refs_is_literal() -> None:
    template = compile_template("static/file.txt")
    assert template.refs == ()
    assert template.render({}, None) == "static/file.txt"


def test_integer_claim_is_rendered() -> None:
    template = compile_template("tenants/{claims.tenant}/x")
    assert template.render({}, {"tenant": 7}) == "tenants/7/x"


def test_claim_name_may_contain_dots_and_dashes() -> None:
    template = compile_template("{claims.https://example.com/org}/{claims.x-y}")
    assert template.claims == {"https://example.com/org", "x-y"}
    claims = {"https://example.com/org": "acme", "x-y": "z"}
    assert template.render({}, claims) == "acme/z"


@pytest.mark.parametrize(
    "claims",
    [
        None,
        {},
        {"other": "alice"},
        {"sub": None},
        {"sub": ["alice"]},
        {"sub": {"name": "alice"}},
        {"sub": True},
        {"sub": False},
        {"sub": 1.5},
        {"sub": ""},
        {"sub": "a/b"},
        {"sub": "/alice"},
        {"sub": ".."},
        {"sub": "."},
        {"sub": "a\\b"},
        {"sub": "a\x00"},
        {"sub": "a\nb"},
        {"sub": "x" * (MAX_PARAM_LENGTH + 1)},
    ],
)
def test_unusable_claim_in_key_is_forbidden(claims: dict[str, object] | None) -> None:
    template = compile_template("users/{claims.sub}/{path}")
    with pytest.raises(Forbidden) as caught:
        template.render({"path": "notes.txt"}, claims)
    assert caught.value.status == 403


def test_claim_dots_inside_a_segment_are_allowed() -> None:
    template = compile_template("users/{claims.sub}/x")
    assert template.render({}, {"sub": "alice.smith"}) == "users/alice.smith/x"
    assert template.render({}, {"sub": "a..b"}) == "users/a..b/x"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("users/{bad name}", "neither a path parameter nor a claim"),
        ("users/{}", "neither a path parameter nor a claim"),
        ("users/{1x}", "neither a path parameter nor a claim"),
        ("users/{claims.}", "needs a claim name"),
        ("users/{path", "unbalanced"),
        ("users/path}", "unbalanced"),
        ("users/{path}}", "unbalanced"),
        ("users/}{path}", "unbalanced"),
        ("users/{path}/{", "unbalanced"),
    ],
)
def test_compile_template_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        compile_template(source)


@pytest.mark.parametrize("source", ["users/{claims.sub/{path}", "a{b{path}"])
def test_unclosed_brace_before_a_reference_is_an_error(source: str) -> None:
    with pytest.raises(TemplateError):
        compile_template(source)


# Router


def test_router_first_match_wins() -> None:
    router = Router(
        [
            compile_pattern("/files/special"),
            compile_pattern("/files/{path:.+}"),
            compile_pattern("/files/{name}"),
        ]
    )
    assert router.match("/files/special") == Match(0, {})
    assert router.match("/files/other") == Match(1, {"path": "other"})
    assert router.match("/files/a/b") == Match(1, {"path": "a/b"})


def test_router_order_is_config_order() -> None:
    router = Router([compile_pattern("/files/{name}"), compile_pattern("/files/{path:.+}")])
    assert router.match("/files/x") == Match(0, {"name": "x"})
    assert router.match("/files/x/y") == Match(1, {"path": "x/y"})


def test_router_no_match_is_none() -> None:
    router = Router([compile_pattern("/photos/{id}")])
    assert router.match("/nothing/here") is None
    assert router.match("/photos/1/2") is None
    assert Router([]).match("/photos/1") is None


def test_router_ignores_the_query_string() -> None:
    router = Router([compile_pattern("/photos/{id}"), compile_pattern("/files/{path:.+}")])
    assert router.match("/photos/42?size=small&x=/../y") == Match(0, {"id": "42"})
    assert router.match("/files/a/b?") == Match(1, {"path": "a/b"})
    assert router.match("/files/a%3Fb?c=d") == Match(1, {"path": "a?b"})


def test_router_propagates_bad_request_from_the_matching_pattern() -> None:
    router = Router([compile_pattern("/photos/{id}")])
    with pytest.raises(BadRequest):
        router.match("/photos/%2e%2e?x=1")


def test_router_remembers_a_path_but_answers_as_matching_would() -> None:
    # The memo (path -> match) must give what matching gives: the same route and params for
    # a repeated path, None for a repeated miss, and still the refusal for an unsafe value
    # (a refusal is never remembered as a miss).
    router = Router([compile_pattern("/photos/{id}"), compile_pattern("/files/{path:.+}")])
    for _ in range(3):
        assert router.match("/files/a/b?x=1") == Match(1, {"path": "a/b"})
        assert router.match("/files/a/b") == Match(1, {"path": "a/b"})
        assert router.match("/nothing") is None
        with pytest.raises(BadRequest):
            router.match("/photos/%2e%2e")
        with pytest.raises(BadRequest):
            router.match("/files/a/%2e%2e/b")


def test_router_memo_is_bounded() -> None:
    router = Router([compile_pattern("/photos/{id}")])
    for number in range(MATCHES_KEPT + 10):
        assert router.match(f"/photos/{number}") == Match(0, {"id": str(number)})
    assert len(router._matches) <= MATCHES_KEPT
    assert router.match("/photos/7") == Match(0, {"id": "7"})


def test_router_memo_keeps_no_long_path() -> None:
    """The sign API matches paths from a JSON body of up to a MiB, for anonymous callers too:
    a memo of MATCHES_KEPT such paths would pin gigabytes. Long paths, matching or not, are
    matched every time and never kept (the memo's size stays a few MiB at most)."""
    router = Router([compile_pattern("/files/{path:.+}")])
    long_miss = "/nomatch/" + "x" * 1_000_000
    long_miss_too = "/other/" + "z" * (PATH_KEPT_CHARS - 6)  # one character over the bound
    for _ in range(2):
        assert router.match(long_miss) is None
        assert router.match(long_miss_too) is None
        with pytest.raises(BadRequest):  # (a key that long is refused, as ever)
            router.match("/files/" + "y" * 2000)
    assert router._matches == {}
    assert router.match("/files/short") == Match(0, {"path": "short"})
    assert list(router._matches) == ["/files/short"]


def test_router_skips_a_pattern_by_its_literal_prefix_only() -> None:
    # The prefix is the literal text before the first placeholder, compared as is: a
    # case-different or percent-encoded spelling of it is not the pattern's.
    router = Router([compile_pattern("/a-{x}/b"), compile_pattern("/{y}/b")])
    assert router.match("/a-1/b") == Match(0, {"x": "1"})
    assert router.match("/A-1/b") == Match(1, {"y": "A-1"})
    assert router.match("/%61-1/b") == Match(1, {"y": "a-1"})


def test_a_key_that_is_one_whole_parameter_renders_as_the_others_do() -> None:
    """`{key}` renders by one lookup; any literal or claim beside it takes the full walk."""
    params = {"key": "a/b.txt", "user": "u"}
    claims = {"sub": "alice"}
    assert compile_template("{key}").render(params, claims) == "a/b.txt"
    assert compile_template("{key}/x").render(params, claims) == "a/b.txt/x"
    assert compile_template("p/{key}").render(params, claims) == "p/a/b.txt"
    assert compile_template("{user}{key}").render(params, claims) == "ua/b.txt"
    assert compile_template("{claims.sub}").render(params, claims) == "alice"
    assert compile_template("{key}") == compile_template("{key}")  # still a plain value
