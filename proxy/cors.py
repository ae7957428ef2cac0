"""CORS for cross-origin pages: allowed origins per route, credentials, preflight. No I/O.

Only what a file proxy needs: GET/HEAD from listed origins, with the headers a browser must
be allowed to send (Authorization, Range, conditionals) and read (length, range, validators).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from .config import CorsSettings

ALLOWED_REQUEST_HEADERS = (
    "Authorization, Range, If-None-Match, If-Modified-Since, If-Match, If-Unmodified-Since, "
    "If-Range, Accept, Content-Type"
)
EXPOSED_HEADERS = (
    "Content-Length, Content-Range, Content-Disposition, Content-Type, ETag, Last-Modified, "
    "Accept-Ranges, X-Request-Id"
)


def allowed_origin(cors: CorsSettings, origin: str | None) -> str | None:
    """The value for Access-Control-Allow-Origin, or None when this origin is not allowed."""
    if origin is None:
        return None
    if origin in cors.origins:
        return origin
    if "*" in cors.origins:
        return "*"
    return None


def response_headers(cors: CorsSettings, origin: str | None) -> dict[str, str]:
    headers = {"Vary": "Origin"}  # the answer differs by Origin: caches must key on it
    allow = allowed_origin(cors, origin)
    if allow is None:
        return headers
    headers["Access-Control-Allow-Origin"] = allow
    headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    if cors.credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def preflight_headers(
    cors: CorsSettings, origin: str | None, methods: list[str], requested_method: str
) -> dict[str, str] | None:
    """Headers for a 204 preflight answer, or None to refuse it."""
    if allowed_origin(cors, origin) is None or requested_method not in methods:
        return None
    headers = response_headers(cors, origin)
    headers.update(
        {
            "Access-Control-Allow-Methods": ", ".join(methods),
            "Access-Control-Allow-Headers": ALLOWED_REQUEST_HEADERS,
            "Access-Control-Max-Age": str(cors.max_age),
        }
    )
    return headers


def add_headers(target: MutableMapping[str, str], extra: Mapping[str, str]) -> None:
    """Put CORS headers on a response; a Vary already there is extended, not replaced."""
    for name, value in extra.items():
        current = target.get(name) if name == "Vary" else None
        if current and value not in (part.strip() for part in current.split(",")):
            target[name] = f"{current}, {value}"
        elif not current:
            target[name] = value
