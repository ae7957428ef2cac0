"""A route's `cookie_scope`, compiled at load against the route's key template: for each
object, the Resource its signed cookies cover. No I/O.

Rules:

1. A scope is a part of its route's key: it may use only the parameters and claims the key
   uses, and must cover the key whatever their values (checked at load). Its values are read
   back from the object's own key, so the scope is a function of the object the caller was
   authorized for, and of nothing else.
2. The template's own text keeps its wildcards (`albums/{album}/*`); every value placed in it
   is percent-encoded exactly as the object's key is in its URL, so a `*` or `?` in a value
   is a character, never a wildcard: `/cdn/albums/*/x.jpg` cannot widen one album's cookies
   to every album.
3. A wildcard never touches a value: `albums/{album}*` would give album `a`'s cookies album
   `ab` too (and `*{album}/` album `ba`). A value is always bounded by a `/` or the scope's
   own text on both sides (refused at load).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from ..routing import KeyTemplate, TemplateError
from .policy import resource_matches
from .signer import object_path

Ref = tuple[str, str]  # ("param", name) or ("claim", name), as KeyTemplate.refs holds them


def scope_path(template: KeyTemplate, values: Mapping[Ref, str]) -> str:
    """The URL path (with its leading `/`) the scope covers, wildcards kept."""
    out = [_literal(template.literals[0])]
    for ref, literal in zip(template.refs, template.literals[1:], strict=True):
        out.append(quote(values[ref], safe="/~"))
        out.append(_literal(literal))
    return "/" + "".join(out)


def _literal(text: str) -> str:
    return quote(text, safe="/~*?")


@dataclass(frozen=True)
class CookieScope:
    """A compiled cookie_scope: its template, and the route's key template as a regex whose
    groups give back the values the key was rendered with."""

    template: KeyTemplate
    key_pattern: re.Pattern[str]
    groups: Mapping[str, Ref]  # regex group name -> the ref it captures

    @property
    def source(self) -> str:
        return self.template.source

    def path_for(self, key: str) -> str:
        """The URL path the cookies for the object at `key` cover."""
        found = self.key_pattern.fullmatch(key)
        if found is None:  # the key was rendered from this very template: never happens
            raise ValueError("the key does not follow the route's key template")
        values = {self.groups[name]: value for name, value in found.groupdict().items()}
        return scope_path(self.template, values)


def compile_scope(
    scope: KeyTemplate, key: KeyTemplate, multi_segment: frozenset[str]
) -> CookieScope:
    """`scope` against its route's `key`; `multi_segment`, the match parameters whose values
    may hold `/`. TemplateError when the scope is not a part of the key (rule 1)."""
    missing = sorted(set(scope.refs) - set(key.refs))
    if missing:
        kind, name = missing[0]
        shown = f"{{claims.{name}}}" if kind == "claim" else f"{{{name}}}"
        raise TemplateError(
            f"{shown} is not in the route's key {key.source!r}; a cookie scope may use only "
            "the key's own parameters and claims"
        )
    for before, after in zip(scope.literals, scope.literals[1:], strict=False):
        if before[-1:] in ("*", "?") or after[:1] in ("*", "?"):
            raise TemplateError(
                f"{scope.source!r} puts a wildcard right beside a value, so one value's "
                "cookies would also open every value that starts (or ends) with it; put a / "
                "between them, e.g. albums/{album}/*"
            )
    groups: dict[str, Ref] = {}
    parts = [re.escape(key.literals[0])]
    for ref, literal in zip(key.refs, key.literals[1:], strict=True):
        kind, name = ref
        group = f"{kind[0]}_{name}"
        if group in groups:
            parts.append(f"(?P={group})")
        else:
            groups[group] = ref
            wide = kind == "param" and name in multi_segment
            parts.append(f"(?P<{group}>{'.+' if wide else '[^/]+'})")
        parts.append(re.escape(literal))
    compiled = CookieScope(scope, re.compile("".join(parts), re.DOTALL), groups)
    if not _covers_key(compiled, key):
        raise TemplateError(
            f"{scope.source!r} does not cover the route's key {key.source!r}, so its cookies "
            "would not open the object the 302 points at; e.g. albums/{album}/* for "
            "albums/{album}/{name}"
        )
    return compiled


def _covers_key(scope: CookieScope, key: KeyTemplate) -> bool:
    """Whether the scope covers the route's key whatever the values (with sample values)."""
    values = {ref: f"v{index}x" for index, ref in enumerate(dict.fromkeys(key.refs))}
    rendered = key.literals[0] + "".join(
        values[ref] + literal for ref, literal in zip(key.refs, key.literals[1:], strict=True)
    )
    return resource_matches(scope.path_for(rendered), object_path(rendered))
