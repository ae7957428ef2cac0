"""Unit tests for proxy.policy: compile_rule and each rule's denial() semantics."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.policy import (
    AllRule,
    AnyRule,
    Authenticated,
    ClaimsRule,
    NotRule,
    Public,
    Rule,
    claims_that_pass,
    compile_rule,
)


def allows(rule: Rule, claims: dict[str, Any], params: dict[str, str] | None = None) -> bool:
    return rule.denial(claims, params or {}) is None


def claims_rule(expected: dict[str, Any], params: tuple[str, ...] = ()) -> Rule:
    return compile_rule({"claims": expected}, params)


# compile_rule: shapes


def test_public() -> None:
    rule = compile_rule("public", [])
    assert isinstance(rule, Public)
    assert rule.needs_token is False
    assert rule.denial({}, {}) is None


def test_authenticated() -> None:
    rule = compile_rule("authenticated", [])
    assert isinstance(rule, Authenticated)
    assert rule.needs_token is True
    assert rule.denial({}, {}) is None
    assert rule.denial({"sub": "alice"}, {}) is None


def test_compiled_shapes() -> None:
    assert isinstance(claims_rule({"role": "admin"}), ClaimsRule)
    assert isinstance(compile_rule({"any": ["authenticated"]}, []), AnyRule)
    assert isinstance(compile_rule({"all": ["authenticated"]}, []), AllRule)
    assert isinstance(compile_rule({"not": "authenticated"}, []), NotRule)
    for value in ({"claims": {"a": 1}}, {"any": ["public"]}, {"all": ["public"]}):
        assert compile_rule(value, []).needs_token is True


# claims: equality and membership


@pytest.mark.parametrize(
    ("expected", "actual", "allowed"),
    [
        ("admin", "admin", True),
        ("admin", "Admin", False),
        ("admin", "administrator", False),
        ("admin", "", False),
        ("admin", ["user", "admin"], True),
        ("admin", ["user"], False),
        ("admin", [], False),
        ("admin", {"admin": True}, False),
        ("admin", None, False),
        # space-separated string claims (OAuth `scope`) are sets of words
        ("read", "read write", True),
        ("write", "read write", True),
        ("rea", "read write", False),
        ("delete", "read write", False),
        ("read write", "read write", True),
        ("write read", "read write", False),
        # numbers
        (5, 5, True),
        (5, 5.0, True),
        (5, 6, False),
        (5, "5", False),
        ("5", 5, False),
        (5, [1, 5], True),
        (1.5, 1.5, True),
        # bool is not an int
        (True, True, True),
        (False, False, True),
        (True, False, False),
        (True, 1, False),
        (1, True, False),
        (False, 0, False),
        (0, False, False),
        (True, "true", False),
        ("true", True, False),
        (True, [1, "true"], False),
        (True, [0, True], True),
        (1, [True], False),
    ],
)
def test_claim_value_matching(expected: Any, actual: Any, allowed: bool) -> None:
    rule = compile_rule({"claims": {"c": expected}}, (), frozenset({"c"}))  # `c` is a list claim
    assert allows(rule, {"c": actual}) is allowed


@pytest.mark.parametrize("claim", ["role", "sub", "groups"])
def test_only_declared_list_claims_are_split_on_spaces(claim: str) -> None:
    # A token whose `role` is "guest admin" is no admin: only auth.list_claims are word sets.
    assert not allows(claims_rule({claim: "admin"}), {claim: "guest admin"})
    assert allows(claims_rule({claim: "admin"}), {claim: ["guest", "admin"]})  # a JSON list is


def test_scope_is_a_list_claim_by_default() -> None:
    assert allows(claims_rule({"scope": "files:read"}), {"scope": "openid files:read"})
    assert not allows(claims_rule({"scope": "files:read"}), {"scope": "files:readwrite"})


def test_list_of_expected_values_is_any_of_them() -> None:
    rule = claims_rule({"role": ["admin", "auditor"]})
    assert allows(rule, {"role": "admin"})
    assert allows(rule, {"role": "auditor"})
    assert allows(rule, {"role": ["guest", "auditor"]})
    assert not allows(rule, {"role": "guest"})
    assert not allows(rule, {"role": ["guest"]})


def test_every_listed_claim_must_match() -> None:
    rule = claims_rule({"role": "admin", "org": "acme"})
    assert allows(rule, {"role": "admin", "org": "acme"})
    assert not allows(rule, {"role": "admin", "org": "evil"})
    assert not allows(rule, {"role": "user", "org": "acme"})
    assert not allows(rule, {"role": "admin"})


def test_missing_claim_denies_with_its_name() -> None:
    rule = claims_rule({"role": "admin"})
    assert rule.denial({}, {}) == "claim 'role' missing"
    assert rule.denial({"role": "user"}, {}) == "claim 'role' does not match"


def test_claim_present_with_null_value_does_not_match_anything() -> None:
    assert not allows(claims_rule({"role": "admin"}), {"role": None})


# claims: templated expected values


def test_param_template() -> None:
    rule = claims_rule({"sub": "{user}"}, params=("user", "path"))
    assert allows(rule, {"sub": "alice"}, {"user": "alice", "path": "x"})
    assert not allows(rule, {"sub": "alice"}, {"user": "bob", "path": "x"})
    assert not allows(rule, {"sub": "alice"}, {"user": "ali", "path": "x"})
    assert not allows(rule, {"sub": "alice"}, {"user": "alice2", "path": "x"})


def test_param_template_with_a_space_compares_the_whole_value() -> None:
    rule = claims_rule({"sub": "{user}"}, params=("user",))
    assert not allows(rule, {"sub": "alice"}, {"user": "alice bob"})
    assert allows(rule, {"sub": "alice bob"}, {"user": "alice bob"})


def test_param_template_against_a_list_claim() -> None:
    rule = claims_rule({"groups": "team-{team}"}, params=("team",))
    assert allows(rule, {"groups": ["team-red", "team-blue"]}, {"team": "blue"})
    assert not allows(rule, {"groups": ["team-red"]}, {"team": "blue"})


def test_claim_template() -> None:
    rule = claims_rule({"tenant": "{claims.org}"})
    assert allows(rule, {"tenant": "acme", "org": "acme"})
    assert not allows(rule, {"tenant": "acme", "org": "evil"})


def test_mixed_template() -> None:
    rule = claims_rule({"aud_path": "{claims.org}/{user}"}, params=("user",))
    assert allows(rule, {"aud_path": "acme/alice", "org": "acme"}, {"user": "alice"})
    assert not allows(rule, {"aud_path": "acme/alice", "org": "acme"}, {"user": "bob"})


@pytest.mark.parametrize(
    "claims",
    [
        {"tenant": "acme"},
        {"tenant": "acme", "org": None},
        {"tenant": "acme", "org": ["acme"]},
        {"tenant": "acme", "org": {"name": "acme"}},
    ],
)
def test_claim_template_with_missing_or_structured_claim_denies(claims: dict[str, Any]) -> None:
    rule = claims_rule({"tenant": "{claims.org}"})
    assert rule.denial(claims, {}) == "claim 'tenant' does not match"


def test_template_is_not_a_literal_string() -> None:
    rule = claims_rule({"sub": "{user}"}, params=("user",))
    assert not allows(rule, {"sub": "{user}"}, {"user": "alice"})


def test_template_param_missing_at_runtime_denies() -> None:
    rule = claims_rule({"sub": "{user}"}, params=("user",))
    assert not allows(rule, {"sub": "alice"}, {})


# any / all / not


ADMIN = {"claims": {"role": "admin"}}
ACME = {"claims": {"org": "acme"}}


@pytest.mark.parametrize(
    ("claims", "any_allowed", "all_allowed"),
    [
        ({"role": "admin", "org": "acme"}, True, True),
        ({"role": "admin", "org": "evil"}, True, False),
        ({"role": "user", "org": "acme"}, True, False),
        ({"role": "user", "org": "evil"}, False, False),
        ({}, False, False),
    ],
)
def test_any_and_all(claims: dict[str, Any], any_allowed: bool, all_allowed: bool) -> None:
    assert allows(compile_rule({"any": [ADMIN, ACME]}, []), claims) is any_allowed
    assert allows(compile_rule({"all": [ADMIN, ACME]}, []), claims) is all_allowed


def test_any_denial_lists_every_reason() -> None:
    rule = compile_rule({"any": [ADMIN, ACME]}, [])
    assert rule.denial({"role": "user"}, {}) == (
        "none of: claim 'role' does not match; claim 'org' missing"
    )


def test_all_denial_is_the_first_failing_reason() -> None:
    rule = compile_rule({"all": [ADMIN, ACME]}, [])
    assert rule.denial({"role": "admin"}, {}) == "claim 'org' missing"


def test_not() -> None:
    rule = compile_rule({"not": {"claims": {"role": "guest"}}}, [])
    assert allows(rule, {"role": "admin"})
    assert allows(rule, {})
    assert rule.denial({"role": "guest"}, {}) == "negated rule matched"
    assert rule.denial({"role": ["user", "guest"]}, {}) == "negated rule matched"


def test_not_authenticated_denies_every_token() -> None:
    assert not allows(compile_rule({"not": "authenticated"}, []), {"sub": "alice"})


def test_nested_rules_compile_recursively_with_params() -> None:
    rule = compile_rule(
        {"any": [ADMIN, {"all": [{"claims": {"sub": "{user}"}}, {"not": {"claims": {"x": 1}}}]}]},
        ["user"],
    )
    assert allows(rule, {"role": "admin"}, {"user": "bob"})
    assert allows(rule, {"sub": "bob"}, {"user": "bob"})
    assert not allows(rule, {"sub": "bob", "x": 1}, {"user": "bob"})
    assert not allows(rule, {"sub": "alice"}, {"user": "bob"})


# compile errors


@pytest.mark.parametrize(
    "value",
    [
        "private",
        "Public",
        "",
        None,
        True,
        1,
        ["public"],
        {},
        {"role": "admin"},
        {"claims": {"a": 1}, "any": ["public"]},
        {"nay": ["public"]},
    ],
)
def test_unknown_rule(value: Any) -> None:
    with pytest.raises(ValueError, match="unknown access rule"):
        compile_rule(value, [])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"any": []}, "'any' needs a non-empty list"),
        ({"all": []}, "'all' needs a non-empty list"),
        ({"any": "public"}, "'any' needs a non-empty list"),
        ({"all": None}, "'all' needs a non-empty list"),
        ({"any": ["public", "nobody"]}, "unknown access rule 'nobody'"),
        ({"not": "nobody"}, "unknown access rule 'nobody'"),
        ({"claims": {}}, "'claims' needs a map"),
        ({"claims": "role=admin"}, "'claims' needs a map"),
        ({"claims": ["role"]}, "'claims' needs a map"),
        ({"claims": {"role": []}}, "claims.role: an empty list can never match"),
        ({"claims": {"role": None}}, "claims.role: expected a string, number or boolean"),
        ({"claims": {"role": {"a": 1}}}, "claims.role: expected a string, number or boolean"),
        ({"claims": {"role": ["a", ["b"]]}}, "claims.role: expected a string, number or boolean"),
        ({"claims": {"sub": "{bad name}"}}, "claims.sub: "),
        ({"claims": {"sub": "{claims.}"}}, "claims.sub: "),
        ({"claims": {"sub": "{user"}}, "claims.sub: "),
    ],
)
def test_compile_errors(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("{", r"\{")):
        compile_rule(value, [])


def test_template_referencing_an_unknown_param_names_it() -> None:
    with pytest.raises(ValueError) as caught:
        compile_rule({"claims": {"sub": "{user}"}}, ["id", "path"])
    message = str(caught.value)
    assert "{user}" in message
    assert "claims.sub" in message
    assert "id, path" in message


def test_template_referencing_a_param_when_route_has_none() -> None:
    with pytest.raises(ValueError, match=r"\{user\}.*it has: none"):
        compile_rule({"claims": {"sub": "{user}"}}, [])


def test_unknown_param_is_found_inside_nested_rules() -> None:
    with pytest.raises(ValueError, match=r"\{team\}"):
        compile_rule({"any": ["authenticated", {"not": {"claims": {"g": "{team}"}}}]}, ["user"])


def test_claim_template_needs_no_param() -> None:
    rule = compile_rule({"claims": {"tenant": "{claims.org}"}}, [])
    assert allows(rule, {"tenant": "x", "org": "x"})


@pytest.mark.parametrize(
    ("rule", "claims"),
    [
        ("authenticated", {}),
        ({"claims": {"role": "admin"}}, {"role": "admin"}),
        ({"claims": {"role": ["admin", "ops"], "level": 3}}, {"role": "admin", "level": 3}),
        ({"any": [{"claims": {"sub": "{claims.x}"}}, {"claims": {"ops": True}}]}, {"ops": True}),
        ({"all": [{"claims": {"a": "x"}}, {"claims": {"b": "y"}}]}, {"a": "x", "b": "y"}),
        ({"all": [{"claims": {"a": "x"}}, {"claims": {"a": "y"}}]}, None),
        ({"claims": {"sub": "{claims.x}"}}, None),
        ({"not": {"claims": {"banned": True}}}, None),
    ],
)
def test_claims_that_pass_a_rule_where_literals_can_say(rule: Any, claims: Any) -> None:
    compiled = compile_rule(rule, [])
    assert claims_that_pass(compiled) == claims
    if claims is not None:
        assert compiled.denial(claims, {}) is None
