"""Access rules, compiled once at config load, and the authorize() check. No I/O.

Grammar (YAML):
    public | authenticated
    {claims: {name: value, ...}}   every listed claim must match (see _claim_matches)
    {any: [rule, ...]} | {all: [rule, ...]} | {not: rule}
A string claim value may reference path params and claims: "{user}", "tenant-{claims.org}".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .routing import KeyTemplate, TemplateError, compile_template

Claims = Mapping[str, Any]
Params = Mapping[str, str]


class Rule:
    """Base: `needs_token` is False only for `public`. `denial` returns why access is refused."""

    needs_token = True

    def denial(self, claims: Claims, params: Params) -> str | None:  # pragma: no cover
        raise NotImplementedError


class Public(Rule):
    needs_token = False

    def denial(self, claims: Claims, params: Params) -> str | None:
        return None


class Authenticated(Rule):
    def denial(self, claims: Claims, params: Params) -> str | None:
        return None


@dataclass(frozen=True)
class Expected:
    """One expected claim value: a literal, or a template rendered from params and claims."""

    literal: Any = None
    template: KeyTemplate | None = None

    def resolve(self, claims: Claims, params: Params) -> Any:
        if self.template is None:
            return self.literal
        out = [self.template.literals[0]]
        for (kind, name), literal in zip(
            self.template.refs, self.template.literals[1:], strict=True
        ):
            value = params.get(name) if kind == "param" else claims.get(name)
            if value is None or isinstance(value, list | dict):
                return _UNRESOLVED
            out.append(str(value))
            out.append(literal)
        return "".join(out)


_UNRESOLVED = object()


@dataclass(frozen=True)
class ClaimsRule(Rule):
    expected: tuple[tuple[str, tuple[Expected, ...]], ...]
    list_claims: frozenset[str] = frozenset({"scope"})

    def denial(self, claims: Claims, params: Params) -> str | None:
        for name, options in self.expected:
            if name not in claims:
                return f"claim {name!r} missing"
            actual = claims[name]
            split = name in self.list_claims
            if not any(
                _claim_matches(
                    actual, option.resolve(claims, params), split=split and option.template is None
                )
                for option in options
            ):
                return f"claim {name!r} does not match"
        return None


@dataclass(frozen=True)
class AnyRule(Rule):
    rules: tuple[Rule, ...]

    def denial(self, claims: Claims, params: Params) -> str | None:
        reasons = []
        for rule in self.rules:
            reason = rule.denial(claims, params)
            if reason is None:
                return None
            reasons.append(reason)
        return "none of: " + "; ".join(reasons)


@dataclass(frozen=True)
class AllRule(Rule):
    rules: tuple[Rule, ...]

    def denial(self, claims: Claims, params: Params) -> str | None:
        for rule in self.rules:
            reason = rule.denial(claims, params)
            if reason is not None:
                return reason
        return None


@dataclass(frozen=True)
class NotRule(Rule):
    rule: Rule

    def denial(self, claims: Claims, params: Params) -> str | None:
        if self.rule.denial(claims, params) is None:
            return "negated rule matched"
        return None


def claims_that_pass(rule: Rule) -> dict[str, Any] | None:
    """Literal claims a token needs to pass `rule` (for a command line that mints its own
    admin token), or None where the rule asks more than literals can say (templates, `not`).
    """
    if isinstance(rule, ClaimsRule):
        found: dict[str, Any] = {}
        for name, options in rule.expected:
            literal = next((o.literal for o in options if o.template is None), None)
            if literal is None:
                return None
            found[name] = literal
        return found
    if isinstance(rule, AllRule):
        merged: dict[str, Any] = {}
        for inner in rule.rules:
            part = claims_that_pass(inner)
            if part is None or any(merged.get(k, v) != v for k, v in part.items()):
                return None
            merged.update(part)
        return merged
    if isinstance(rule, AnyRule):
        return next(
            (part for inner in rule.rules if (part := claims_that_pass(inner)) is not None), None
        )
    if isinstance(rule, NotRule):
        return None
    return {}


def _claim_matches(actual: Any, expected: Any, *, split: bool) -> bool:
    """Equality; or membership when the claim is a list, or a space-separated string that
    auth.list_claims declares a list (OAuth `scope`).

    Splitting applies to those claims and literal values only: `role: "guest admin"` is not
    an admin, and a value built from the request (`{user}`) must match exactly, or
    `sub: "mallory alice"` would pass an owner check for alice.
    """
    if expected is _UNRESOLVED:
        return False
    if isinstance(actual, list):
        return any(_scalar_equal(item, expected) for item in actual)
    if split and isinstance(actual, str) and isinstance(expected, str) and " " not in expected:
        return expected in actual.split()
    return _scalar_equal(actual, expected)


def _scalar_equal(actual: Any, expected: Any) -> bool:
    # bool is an int in Python; `admin: true` must not match a claim of 1.
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    if isinstance(actual, int | float) and isinstance(expected, int | float):
        return actual == expected
    return isinstance(actual, str) and isinstance(expected, str) and actual == expected


def compile_rule(
    value: Any,
    params: Sequence[str] | set[str],
    list_claims: frozenset[str] = frozenset({"scope"}),
) -> Rule:
    """Compile a rule from YAML; raise ValueError with a message that says how to fix it."""
    if value == "public":
        return Public()
    if value == "authenticated":
        return Authenticated()
    if isinstance(value, Mapping) and len(value) == 1:
        ((kind, body),) = value.items()
        if kind == "claims":
            return _compile_claims(body, set(params), list_claims)
        if kind in ("any", "all"):
            if not isinstance(body, list) or not body:
                raise ValueError(f"'{kind}' needs a non-empty list of rules")
            rules = tuple(compile_rule(item, params, list_claims) for item in body)
            return AnyRule(rules) if kind == "any" else AllRule(rules)
        if kind == "not":
            return NotRule(compile_rule(body, params, list_claims))
    raise ValueError(
        f"unknown access rule {value!r}; use 'public', 'authenticated', "
        "{claims: {name: value}}, {any: [...]}, {all: [...]} or {not: rule}"
    )


def _compile_claims(body: Any, params: set[str], list_claims: frozenset[str]) -> ClaimsRule:
    if not isinstance(body, Mapping) or not body:
        raise ValueError(
            "'claims' needs a map of claim names to expected values, e.g. {role: admin}"
        )
    expected = []
    for name, raw in body.items():
        options = raw if isinstance(raw, list) else [raw]
        if not options:
            raise ValueError(f"claims.{name}: an empty list can never match")
        compiled = []
        for option in options:
            if isinstance(option, str) and "{" in option:
                try:
                    template = compile_template(option)
                except TemplateError as exc:
                    raise ValueError(f"claims.{name}: {exc}") from None
                missing = template.params - params
                if missing:
                    raise ValueError(
                        f"claims.{name}: {{{sorted(missing)[0]}}} is not a parameter of this "
                        f"route's match pattern (it has: {', '.join(sorted(params)) or 'none'})"
                    )
                compiled.append(Expected(template=template))
            elif isinstance(option, str | int | float | bool):
                compiled.append(Expected(literal=option))
            else:
                raise ValueError(f"claims.{name}: expected a string, number or boolean")
        expected.append((str(name), tuple(compiled)))
    return ClaimsRule(tuple(expected), list_claims)
