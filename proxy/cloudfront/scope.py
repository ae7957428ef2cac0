"""A route's `cookie_scope` rendered for one request: the Resource its signed cookies cover.
No I/O.

The template's own text keeps its wildcards (`albums/{album}/*`); every value placed in it (a
path parameter, a claim) is percent-encoded exactly as the object's key is in its URL, so a
`*` or `?` in a value is a character, never a wildcard: `/cdn/albums/*/x.jpg` cannot widen
one album's cookies to every album.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from ..routing import KeyTemplate, claim_as_key_fragment
from .policy import resource_matches
from .signer import object_path


def scope_path(
    template: KeyTemplate, params: Mapping[str, str], claims: Mapping[str, Any] | None
) -> str:
    """The URL path (with its leading `/`) the scope covers, wildcards kept."""
    out = [_literal(template.literals[0])]
    for (kind, name), literal in zip(template.refs, template.literals[1:], strict=True):
        value = params[name] if kind == "param" else claim_as_key_fragment(claims, name)
        out.append(quote(value, safe="/~"))
        out.append(_literal(literal))
    return "/" + "".join(out)


def _literal(text: str) -> str:
    return quote(text, safe="/~*?")


def covers_key(scope: KeyTemplate, key: KeyTemplate) -> bool:
    """Whether the scope covers the route's key whatever the values (checked at load with
    sample values: a scope that misses its own route's key is a config mistake)."""
    names = sorted({name for _, name in (*scope.refs, *key.refs)})
    params = {name: f"v{index}x" for index, name in enumerate(names)}
    claims = dict(params)
    rendered_key = key.render(params, claims)
    return resource_matches(scope_path(scope, params, claims), object_path(rendered_key))
