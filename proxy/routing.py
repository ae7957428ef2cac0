"""Route patterns and key templates, compiled once at load; matching and key rendering. No I/O.

Matching runs on the *raw* (still percent-encoded) request path, so `%2F` can never turn one
segment into two. Each captured value is then decoded on its own and refused (400) if it holds
anything that could move the rendered key outside the route's template: `.`/`..` segments,
empty segments, backslashes, NUL or other control characters, or invalid UTF-8.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from .errors import BadRequest, Forbidden

# `{name}` is one path segment; `{name:regex}` is a custom pattern (`.+` = rest of the path).
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::((?:[^{}]|\{[^{}]*\})+))?\}")
# In key templates: `{param}` or `{claims.name}`.
_TEMPLATE_REF = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# C0/C1 controls, DEL, backslash, and bidi controls (which can disguise a file name's extension).
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\\\u200e\u200f\u202a-\u202e\u2066-\u2069]")
MAX_PARAM_LENGTH = 1024  # S3 keys are at most 1024 bytes; anything longer cannot exist.


class TemplateError(ValueError):
    """A pattern or template that cannot be compiled; the message says how to fix it."""


@dataclass(frozen=True)
class PathPattern:
    source: str
    regex: re.Pattern[str]
    params: tuple[str, ...]
    multi_segment: frozenset[str]  # params whose pattern may span several segments

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Return the decoded params when `raw_path` matches; raise BadRequest on unsafe values."""
        found = self.regex.fullmatch(raw_path)
        if found is None:
            return None
        # A value may hold '/' when its pattern spans segments: known from the pattern where
        # possible, or evident when the raw capture itself crossed a '/'.
        return {
            name: decode_param(value, allow_slash=name in self.multi_segment or "/" in value)
            for name, value in found.groupdict().items()
        }


def compile_pattern(source: str) -> PathPattern:
    if not source.startswith("/"):
        raise TemplateError(f"must start with '/', e.g. '/{source}'")
    parts: list[str] = []
    params: list[str] = []
    multi: set[str] = set()
    last = 0
    for found in _PLACEHOLDER.finditer(source):
        literal = source[last : found.start()]
        if "{" in literal or "}" in literal:
            raise TemplateError(f"unbalanced or invalid placeholder in {source!r}")
        parts.append(re.escape(literal))
        name, custom = found.group(1), found.group(2)
        if name in params:
            raise TemplateError(f"placeholder {{{name}}} appears twice in {source!r}")
        params.append(name)
        if custom is None:
            parts.append(f"(?P<{name}>[^/]+)")
        else:
            try:
                re.compile(custom)
            except re.error as exc:
                raise TemplateError(f"invalid regex for {{{name}}}: {exc}") from None
            if re.fullmatch(custom, "a/b"):
                multi.add(name)
            parts.append(f"(?P<{name}>{custom})")
        last = found.end()
    tail = source[last:]
    if "{" in tail or "}" in tail:
        raise TemplateError(f"unbalanced or invalid placeholder in {source!r}")
    parts.append(re.escape(tail))
    try:
        regex = re.compile("".join(parts))
    except re.error as exc:
        raise TemplateError(
            f"a placeholder regex does not fit inside the route pattern ({exc}); "
            "avoid inline flags, backreferences and named groups"
        ) from None
    return PathPattern(source, regex, tuple(params), frozenset(multi))


def decode_param(raw: str, *, allow_slash: bool) -> str:
    """Percent-decode one captured value and refuse anything that could escape the template."""
    try:
        value = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("path parameter is not valid UTF-8") from None
    check_key_fragment(value, allow_slash=allow_slash, error=BadRequest)
    return value


def check_key_fragment(value: str, *, allow_slash: bool, error: type[Exception]) -> None:
    if not value:
        raise error("empty path parameter")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise error("path parameter is not valid UTF-8") from None
    if len(encoded) > MAX_PARAM_LENGTH:
        raise error("path parameter too long")
    if _FORBIDDEN_CHARS.search(value):
        raise error("path parameter contains a backslash or control character")
    if "/" in value and not allow_slash:
        raise error("path parameter contains '/' where one segment is expected")
    for segment in value.split("/"):
        if segment in ("", ".", ".."):
            raise error("path parameter contains an empty, '.' or '..' segment")


@dataclass(frozen=True)
class KeyTemplate:
    """A key template such as `users/{claims.sub}/{path}`, split into literal and reference parts.

    Parts alternate: even indexes are literals, odd indexes are references, each either
    ("param", name) or ("claim", name).
    """

    source: str
    literals: tuple[str, ...]
    refs: tuple[tuple[str, str], ...]
    # The path parameter the whole key is (`{key}`, the common template), else None: set
    # from the fields above, so that such a key renders by one lookup on every request.
    _whole_param: str | None = field(default=None, init=False, compare=False, repr=False)

    @property
    def params(self) -> set[str]:
        return {name for kind, name in self.refs if kind == "param"}

    @property
    def claims(self) -> set[str]:
        return {name for kind, name in self.refs if kind == "claim"}

    def __post_init__(self) -> None:
        whole = (
            self.refs[0][1]
            if len(self.refs) == 1 and self.refs[0][0] == "param" and not any(self.literals)
            else None
        )
        object.__setattr__(self, "_whole_param", whole)

    def render(self, params: Mapping[str, str], claims: Mapping[str, Any] | None) -> str:
        whole = self._whole_param
        if whole is not None:
            return params[whole]
        out = [self.literals[0]]
        for (kind, name), literal in zip(self.refs, self.literals[1:], strict=True):
            if kind == "param":
                out.append(params[name])
            else:
                out.append(claim_as_key_fragment(claims, name))
            out.append(literal)
        return "".join(out)


def compile_template(source: str) -> KeyTemplate:
    literals: list[str] = []
    refs: list[tuple[str, str]] = []
    last = 0
    for found in _TEMPLATE_REF.finditer(source):
        literal = source[last : found.start()]
        if "{" in literal or "}" in literal:
            raise TemplateError(f"unbalanced '{{' or '}}' in {source!r}")
        literals.append(literal)
        ref = found.group(1)
        if ref.startswith("claims."):
            name = ref.removeprefix("claims.")
            if not name:
                raise TemplateError(
                    f"{{claims.}} needs a claim name, e.g. {{claims.sub}} in {source!r}"
                )
            refs.append(("claim", name))
        elif _NAME.fullmatch(ref):
            refs.append(("param", ref))
        else:
            raise TemplateError(
                f"{{{ref}}} is neither a path parameter nor a claim; "
                "use {name} for a path parameter or {claims.name} for a token claim"
            )
        last = found.end()
    tail = source[last:]
    if "{" in tail or "}" in tail:
        raise TemplateError(f"unbalanced '{{' or '}}' in {source!r}")
    literals.append(tail)
    return KeyTemplate(source, tuple(literals), tuple(refs))


def claim_as_key_fragment(claims: Mapping[str, Any] | None, name: str) -> str:
    """A claim placed in a key must be present and be one safe segment; otherwise 403.

    `iss` is a URL (`https://idp.example.com/realm`), so it is percent-encoded into one
    segment (every character but RFC 3986's unreserved ones), keeping issuers apart in keys.
    """
    value = (claims or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Forbidden(f"token lacks claim {name!r} needed for the key")
    text = quote(value, safe="-._~") if name == "iss" and isinstance(value, str) else str(value)
    check_key_fragment(text, allow_slash=False, error=Forbidden)
    return text


@dataclass(frozen=True, slots=True)
class Match:
    index: int
    params: dict[str, str]  # shared by every request of the same path: never modified


# Paths remembered by a Router: matching is a pure function of the raw path, and a hot object
# is asked for by the same path again and again. Bounded: many distinct paths only cost a
# rematch (the memo is emptied when full).
MATCHES_KEPT = 4096
# ... and only paths up to this long (an S3 key is at most 1024 bytes): the sign API matches
# paths from request bodies of up to a MiB, and 4096 of those kept would pin gigabytes.
# Longer paths are matched every time.
PATH_KEPT_CHARS = 2048


class Router:
    """First matching pattern wins. `patterns` come in config order."""

    def __init__(self, patterns: Sequence[PathPattern]) -> None:
        # Each pattern with the literal text its matches must begin with: a path that does
        # not begin so cannot match, and is not handed to the regex at all.
        self._patterns = tuple((_literal_prefix(p.source), p) for p in patterns)
        self._matches: dict[str, Match | None] = {}

    def match(self, raw_path: str) -> Match | None:
        path = raw_path.split("?", 1)[0]
        matches = self._matches
        if path in matches:
            return matches[path]
        found = None
        for index, (prefix, pattern) in enumerate(self._patterns):
            if not path.startswith(prefix):
                continue
            params = pattern.match(path)  # (raises BadRequest for unsafe values: not kept)
            if params is not None:
                found = Match(index, params)
                break
        if len(path) <= PATH_KEPT_CHARS:
            if len(matches) >= MATCHES_KEPT:
                matches.clear()
            matches[path] = found
        return found


def _literal_prefix(source: str) -> str:
    """The text of a pattern before its first placeholder: every match starts with it."""
    first = _PLACEHOLDER.search(source)
    return source if first is None else source[: first.start()]
