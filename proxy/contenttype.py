"""What a browser may do with an object: media types parsed strictly, the inline allow-list,
and the sandbox every streamed body carries. No I/O; never trusts S3's Content-Type as given.

Rules:
1. An object's type comes from whoever uploaded it, so it is attacker-controlled. It is parsed
   strictly (RFC 9110 8.3.1: `type/subtype` tokens, then `;` parameters); anything else —
   a comma (browsers take the *last* type of a list, so `text/plain;,text/html` is HTML to
   them), quotes, spaces inside the type — becomes `application/octet-stream`.
2. Only types on the route's `inline_types` list may be shown in the browser; every other
   type is sent with `Content-Disposition: attachment`, so opening it downloads it.
3. Every streamed body, whatever its type, carries a sandboxing Content-Security-Policy and
   `nosniff`: even a shown type cannot run script with the proxy origin's cookies.
4. A `type/*` pattern (in `inline_types` or `upload.content_types`) covers media a browser
   decodes, never a document it runs: SVG, HTML, XML and script types (ACTIVE_TYPES, and any
   `+xml` subtype) pass only where a list names them exactly. A type holding `*` itself
   (`image/*` declared as an upload's type) is never allowed: it names no one type.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterable
from functools import lru_cache

OCTET_STREAM = "application/octet-stream"
# `sandbox` gives the document an opaque origin with scripts, forms and plugins off;
# `default-src 'none'` stops it loading anything else. Images and media may still load from
# the object's own URL so that a browser's built-in image and video viewers work.
SANDBOX_CSP = "sandbox; default-src 'none'; img-src 'self'; media-src 'self'"
# Types a browser shows without running anything: images it decodes itself (not SVG, which
# is a document), audio, video, PDF (its viewer runs no page script) and plain text.
DEFAULT_INLINE_TYPES = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/bmp",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "video/*",
    "audio/*",
    "application/pdf",
    "text/plain",
)

# Documents a browser parses and may run script or XSLT in: never covered by a wildcard.
ACTIVE_TYPES = frozenset(
    {
        "image/svg+xml",
        "text/html",
        "text/xml",
        "text/xsl",
        "text/javascript",
        "text/ecmascript",
        "application/xhtml+xml",
        "application/xml",
        "application/xslt+xml",
        "application/javascript",
        "application/ecmascript",
    }
)

_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110 5.6.2 token
_MEDIA_TYPE = re.compile(rf"({_TCHARS})/({_TCHARS})")
# A quoted value may not hold a comma either: browsers split the header on commas first.
_PARAMETER = re.compile(rf'\s*({_TCHARS})=({_TCHARS}|"[^",\\]*")\s*')
_PATTERN = re.compile(rf"{_TCHARS}/(?:{_TCHARS}|\*)")


def essence(content_type: str | None) -> str | None:
    """`type/subtype` in lower case, or None when the value is not one well-formed media type."""
    if not content_type:
        return None
    head, _, params = content_type.partition(";")
    found = _MEDIA_TYPE.fullmatch(head.strip())
    if found is None:
        return None
    if params and not all(_PARAMETER.fullmatch(part) for part in params.split(";")):
        return None
    return f"{found.group(1)}/{found.group(2)}".lower()


def safe_content_type(content_type: str | None) -> str:
    """The header value to send: the essence, plus a well-formed charset for text types."""
    kind = essence(content_type)
    if kind is None:
        return OCTET_STREAM
    if kind.startswith("text/") and content_type is not None:
        for part in content_type.split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset":
                charset = value.strip('"').lower()
                return f"{kind}; charset={charset}"
    return kind


def check_pattern(pattern: str) -> str:
    """Validate one `inline_types` entry (`type/subtype` or `type/*`); return it lower-cased."""
    if not _PATTERN.fullmatch(pattern) or pattern.startswith("*"):
        raise ValueError(f"{pattern!r} is not a media type; use type/subtype or type/*")
    return pattern.lower()


class InlineTypes:
    """A list of allowed media types; `type/*` covers a whole type except its active ones
    (rule 4)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self._exact = frozenset(p for p in patterns if not p.endswith("/*"))
        self._prefixes = tuple(p[:-1] for p in patterns if p.endswith("/*"))

    def allows(self, content_type: str | None) -> bool:
        kind = essence(content_type)
        if kind is None or "*" in kind:
            return False
        if kind in self._exact:
            return True
        return kind.startswith(self._prefixes) and not is_active(kind)


def is_active(kind: str) -> bool:
    """Whether a browser runs this `type/subtype` as a document (rule 4)."""
    return kind in ACTIVE_TYPES or kind.endswith("+xml")


def guess_type(key: str) -> str | None:
    """The type a key's extension names (for presigned URLs, where no metadata is fetched)."""
    name = key.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return _type_for_suffix(name[dot:].lower()) if dot > 0 else None


@lru_cache(maxsize=512)
def _type_for_suffix(suffix: str) -> str | None:
    kind, encoding = mimetypes.guess_type("object" + suffix, strict=False)
    # `x.svg.gz` is not an SVG to a browser that is sent it without Content-Encoding.
    return None if encoding else kind
