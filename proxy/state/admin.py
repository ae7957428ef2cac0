"""The revocation endpoint (`admin.path`): POST revokes, GET lists, DELETE undoes.

The caller has passed `admin.access` before this runs. Bodies are small JSON objects:
    POST   {"sub": "alice", "iss": "https://idp.example"} | {"jti": "..."}, optional "ttl"
           -> 201, Location: the entry's own URL (`admin.path?sub=alice&iss=...`)
    GET    the list; with ?sub=alice&iss=... | ?jti=..., that one entry (404 if none)
    DELETE ?sub=alice&iss=... | ?jti=...
HEAD answers as GET does, without the body. Every refusal is a ProxyError (400, 404, 405,
408, 413, 415) chosen here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ..config import Settings
from ..errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from ..request import RequestContext
from .base import State
from .revocations import Kind, entry_id, new_revocation

MAX_BODY = 4096
MAX_VALUE = 1024  # longest sub, iss or jti accepted
MAX_TTL = 31_536_000
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_ALLOWED = "GET, HEAD, POST, DELETE"


async def answer_revocations(
    request: web.BaseRequest,
    context: RequestContext,
    state: State,
    settings: Settings,
    clock: Callable[[], float],
) -> web.Response:
    """Answer one call; a change is a `revocation.added` or `.removed` audit event, by the
    admin the context names."""
    if request.method in ("GET", "HEAD"):
        entries = await state.revocations()
        if request.query:
            wanted = entry_id(*_target(request.query))
            for entry in entries:
                if entry.id == wanted:
                    return web.json_response({"revocation": entry.to_json()}, headers=_HEADERS)
            raise NotFound("no such revocation", detail="no such revocation")
        return web.json_response(
            {"revocations": [entry.to_json() for entry in entries]}, headers=_HEADERS
        )
    if request.method == "POST":
        body = await _read_json(request, settings.limits.body_timeout)
        kind, value, iss = _target(body)
        ttl = body.get("ttl")
        if ttl is not None and (
            not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL
        ):
            raise BadRequest("bad revocation ttl", detail=f"ttl: seconds, 1 to {MAX_TTL}")
        entry = new_revocation(
            kind,
            value,
            iss,
            clock(),
            settings.revocation.max_token_lifetime,
            settings.auth.leeway,
            ttl,
        )
        await state.revoke(entry)
        context.audit("revocation.added", what=_what(kind, value, iss), by="admin endpoint")
        # RFC 9110 15.3.2: a 201 names what it created; GET and DELETE take this URL.
        named = [(kind, value)] if iss is None else [(kind, value), ("iss", iss)]
        location = f"{request.raw_path.split('?', 1)[0]}?{urlencode(named)}"
        return web.json_response(
            {"revocation": entry.to_json()},
            status=201,
            headers={**_HEADERS, "Location": location},
        )
    if request.method == "DELETE":
        kind, value, iss = _target(request.query)
        if not await state.unrevoke(kind, value, iss):
            raise NotFound("no such revocation", detail="no such revocation")
        context.audit("revocation.removed", what=_what(kind, value, iss), by="admin endpoint")
        return web.json_response({"removed": {kind: value, "iss": iss}}, headers=_HEADERS)
    raise MethodNotAllowed(f"method {request.method[:16]} not allowed", allowed=_ALLOWED)


async def _read_json(request: web.BaseRequest, wait: float) -> Mapping[str, Any]:
    if request.content_type != "application/json":
        # Also keeps this endpoint out of reach of cross-site HTML forms (no preflight).
        raise UnsupportedMediaType("revocation needs Content-Type: application/json")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge("revocation body too large", detail=f"at most {MAX_BODY} bytes")
    try:
        async with asyncio.timeout(wait):
            raw = await request.content.read(MAX_BODY + 1)
    except TimeoutError:
        raise RequestTimeout("request body not received within limits.body_timeout") from None
    if len(raw) > MAX_BODY:
        raise PayloadTooLarge("revocation body too large", detail=f"at most {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("revocation body is not JSON", detail="body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("revocation body is not an object", detail=_SHAPE)
    unknown = set(body) - {"sub", "iss", "jti", "ttl"}
    if unknown:
        raise BadRequest("unknown revocation field", detail=f"unknown field {sorted(unknown)[0]!r}")
    return body


def _what(kind: Kind, value: str, iss: str | None) -> dict[str, str | None]:
    """What a revocation names, as the audit trail records it: a subject (and its issuer, or
    null for every issuer's), or one token's or share link's jti."""
    return {"sub": value, "iss": iss} if kind == "sub" else {"jti": value}


_SHAPE = 'expected {"sub": "...", "iss": "..."} (iss optional) or {"jti": "..."}'


def _target(given: Mapping[str, Any]) -> tuple[Kind, str, str | None]:
    """What to revoke: exactly one of sub (with an optional iss) or jti."""
    sub, jti, iss = given.get("sub"), given.get("jti"), given.get("iss")
    if (sub is None) == (jti is None):
        raise BadRequest("revocation without exactly one of sub or jti", detail=_SHAPE)
    if jti is not None and iss is not None:
        raise BadRequest("revocation of a jti with an iss", detail="iss goes with sub only")
    for value in (sub, jti, iss):
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= MAX_VALUE):
            raise BadRequest(
                "bad revocation value", detail=f"sub, iss and jti: strings of 1 to {MAX_VALUE}"
            )
    if isinstance(sub, str):
        return "sub", sub, iss
    return "jti", str(jti), None
