"""What a route shows for one key, whatever the object: the fixed headers of a streamed
answer, and the response headers signed into a presigned URL. No I/O.

Both apply contenttype.py's rules: a streamed body is always sandboxed and shown inline only
when its type is on the route's `inline_types`; a presigned URL forces a type the route may
show (the route's `content_type`, else the key's extension's), or an attachment.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import quote

from ..config import Route
from ..contenttype import SANDBOX_CSP, InlineTypes, guess_type, safe_content_type
from ..cors import add_headers
from ..storage import ObjectMeta
from ..wire import WireHead

_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_ASCII_SAFE = re.compile(r"[^A-Za-z0-9._()+ -]")


@dataclass(frozen=True)
class Presentation:
    """How a route presents one key: its fixed answer headers (disposition, type, caching,
    Vary, CORS), the object types it may show inline, and the key whose name an attachment
    header carries otherwise. `cors`: the request's CORS headers among them (None: none).
    `heads`: the serialized heads of the objects it was shown with (object_head)."""

    headers: Mapping[str, str]
    inline: InlineTypes
    key: str
    cors: Mapping[str, str] | None = None
    heads: dict[tuple[str | None, ...], WireHead] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def attachment(self) -> str:
        return content_disposition("attachment", self.key)


def _single_line(value: str | None) -> str | None:
    """A header value safe to forward: short, printable ASCII (else treated as absent)."""
    if value is None or len(value) > 1024 or not _PRINTABLE_ASCII.fullmatch(value):
        return None
    return value


@lru_cache(maxsize=4096)  # hot keys repeat; building one costs ~20 us of unicode work
def content_disposition(disposition: str, key: str) -> str:
    """RFC 6266 header with an ASCII fallback and an RFC 5987 UTF-8 filename from the key."""
    name = key.rsplit("/", 1)[-1] or "download"
    fallback = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    fallback = _ASCII_SAFE.sub("_", fallback).strip() or "download"
    encoded = quote(name, safe="")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def object_headers(meta: ObjectMeta, shown: Presentation) -> dict[str, str]:
    """Headers for a streamed object: whatever type S3 names, the body is inert on the
    proxy's origin (sandboxed, not sniffed), and shown inline only if the route allows it."""
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Type": safe_content_type(meta.content_type),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": SANDBOX_CSP,
    }
    for name, value in (
        ("ETag", meta.etag),
        ("Last-Modified", meta.last_modified),
        ("Content-Range", meta.content_range),
        ("Content-Encoding", meta.content_encoding),
        ("Content-Language", meta.content_language),
    ):
        if value and _single_line(value):
            headers[name] = value
    headers.update(shown.headers)
    if not shown.inline.allows(headers["Content-Type"]):
        headers["Content-Disposition"] = shown.attachment
    return headers


def object_head(meta: ObjectMeta, shown: Presentation) -> WireHead:
    """object_headers as a serialized head, made once per object's metadata (an object
    served again, from S3 or the object cache, has the same) and kept with `shown`. A
    range's (206) is made each time: ranges seldom repeat."""
    if meta.content_range is not None:
        return WireHead(object_headers(meta, shown), shown.cors)
    # What object_headers reads of `meta` (a tuple: hashed and compared in C, where the
    # dataclass's own __hash__ and __eq__ run in Python).
    version = (
        meta.content_type,
        meta.etag,
        meta.last_modified,
        meta.content_encoding,
        meta.content_language,
    )
    head = shown.heads.get(version)
    if head is None:
        head = WireHead(object_headers(meta, shown), shown.cors)
        if len(shown.heads) >= _HEADS_KEPT:
            shown.heads.clear()  # bounded: an object that keeps changing only costs a rebuild
        shown.heads[version] = head
    return head


# Per key: the object's version, and the one that replaces it while both are served.
_HEADS_KEPT = 2


def presentation(route: Route, key: str, cors: Mapping[str, str] | None) -> Presentation:
    """The headers a streamed answer from this route carries, whatever the object."""
    settings = route.settings
    headers: dict[str, str] = {"Cache-Control": settings.cache_control or "private, no-cache"}
    if settings.disposition:
        headers["Content-Disposition"] = content_disposition(settings.disposition, key)
    if settings.content_type:
        headers["Content-Type"] = settings.content_type
    if route.rule.needs_token:
        # The answer depends on who asks: a browser shared by two people must not show one
        # of them the other's cached file.
        headers["Vary"] = "Authorization, Cookie"
    if cors:
        add_headers(headers, cors)
    return Presentation(headers, route.inline, key, cors or None)


def signed_overrides(route: Route, key: str) -> dict[str, str]:
    """Response headers signed into a presigned URL: S3 then serves the object as a type the
    route may show inline, or as an attachment. Nothing is fetched, so the type is the
    route's `content_type` or the one the key's extension names."""
    settings = route.settings
    overrides: dict[str, str] = {}
    shown_as = settings.content_type or guess_type(key)
    if shown_as is not None and route.inline.allows(shown_as):
        overrides["Content-Type"] = shown_as
        if settings.disposition:
            overrides["Content-Disposition"] = content_disposition(settings.disposition, key)
    else:
        if settings.content_type:
            overrides["Content-Type"] = settings.content_type
        overrides["Content-Disposition"] = content_disposition("attachment", key)
    if settings.cache_control:
        overrides["Cache-Control"] = settings.cache_control
    return overrides
