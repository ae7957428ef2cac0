"""Which requests a sign-in page can help, and where a browser may be sent back to. No I/O.

Rule 1: only a browser's top-level navigation is sent to sign in. An `<img>`, a `fetch()` or
an API client cannot follow a login page, so they keep getting 401.
Rule 2: after sign-in the browser goes back only to a path on this proxy. Anything a browser
could read as another host (`//evil`, `/\\evil`, `https://evil`, or any of these
percent-encoded, or with control characters that browsers strip) is refused.
Rule 3: a request that changes the session (sign-out) must come from this proxy's own
pages: `Sec-Fetch-Site` same-origin (or none: the user's own action), else an `Origin` equal
to the public URL's. A browser sends one of them with every cross-site POST, so a request
with neither is no browser's cross-site request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

MAX_NEXT_LENGTH = 2048
_HTML = ("text/html", "application/xhtml+xml")


def is_navigation(method: str, headers: Mapping[str, str]) -> bool:
    """A GET a browser makes to show a page: `Sec-Fetch-Mode: navigate` to a document where
    the browser says so (every current browser does), else an Accept that prefers HTML."""
    if method != "GET":
        return False
    mode = headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode == "navigate" and headers.get("Sec-Fetch-Dest", "document") == "document"
    return prefers_html(headers.get("Accept"))


def prefers_html(accept: str | None) -> bool:
    """Whether the media range the client ranks first (highest q, then earliest) is HTML."""
    best: tuple[float, int, str] | None = None
    for index, item in enumerate((accept or "").split(",")[:64]):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if not media or not 0 < q <= 1:
            continue
        ranked = (-q, index, media.lower())
        if best is None or ranked < best:
            best = ranked
    return best is not None and best[2] in _HTML


def safe_next(target: str) -> str | None:
    """`target` if it is a path (and query) on this proxy, else None."""
    if not target or len(target) > MAX_NEXT_LENGTH or not target.isascii():
        return None
    seen = target
    for depth in range(4):  # what a browser or another hop may decode, however often encoded
        if not _is_local_path(seen, spaces=depth > 0):
            return None
        decoded = unquote(seen)
        if decoded == seen:
            return target
        seen = decoded
    return None  # encoded more deeply than any honest link is


def _is_local_path(text: str, spaces: bool) -> bool:
    if not text.startswith("/") or text[1:2] in ("/", "\\") or "\\" in text:
        return False
    lowest = 0x20 if spaces else 0x21  # a decoded space is a file name's; a raw one is not
    if any(ord(char) < lowest or ord(char) == 0x7F for char in text):
        return False  # browsers drop tabs and newlines: "/\t/evil" is "//evil" to them
    parts = urlsplit(text)
    return not parts.scheme and not parts.netloc


def is_same_origin(headers: Mapping[str, str], public_url: str) -> bool:
    """Whether a state-changing request comes from this proxy's own pages (rule 3)."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = headers.get("Origin")
    if origin is not None:
        parts = urlsplit(public_url)
        return origin == f"{parts.scheme}://{parts.netloc}"  # "null" is no origin of ours
    return True


def without_params(target: str, names: Iterable[str]) -> str:
    """`target` without the named query parameters: a rejected token in the query must not
    come back after sign-in (it would be read again, and send the browser round once more)."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    dropped = set(names)
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in dropped]
    return f"{path}?{urlencode(kept)}" if kept else path
