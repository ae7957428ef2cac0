"""Share links: tokens bound to one object (route, bucket and key) and GET/HEAD, signed with
auth.link_secret.

An admin mints one with `python -m proxy link PATH` and mails the URL. The link itself is the
authorization for that one object: the request is routed as usual, the key rendered, and the
link is accepted only if the route's name, bucket and rendered key are exactly the ones it was
minted for. It is never compared with the request path, so no other spelling of the path
(`%2F`, a longer path cut for the log) can carry it to another route or object. Its audience
keeps it from ever passing as a normal access token, and normal tokens from passing as links.
Each link carries its own `jti`, so one mailed link can be revoked without rotating the
secret (`python -m proxy revoke --jti`). No I/O.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jwt

from .auth import check_times
from .config import Config
from .errors import ProxyError, Unauthenticated
from .routing import Router

LINK_AUDIENCE = "s3-private-proxy/link"
LINK_METHODS = ("GET", "HEAD")


class LinkError(ValueError):
    """A path no link can be minted for; the message says why."""


@dataclass(frozen=True)
class LinkTarget:
    """The one object a link opens."""

    route: str
    bucket: str
    key: str


def link_target(config: Config, path: str, sub: str | None = None) -> LinkTarget:
    """Route `path` (decoded, as a person types it) as a request would be, and render its key."""
    encoded = quote(path, safe="/")
    try:
        found = Router([route.pattern for route in config.routes]).match(encoded)
    except ProxyError as exc:
        raise LinkError(f"{path}: {exc.reason}") from None
    if found is None:
        raise LinkError(f"{path}: no route matches this path")
    route = config.routes[found.index]
    if not route.rule.needs_token:
        raise LinkError(f"{path}: route {route.name} is public; share the plain URL")
    if route.key.claims - {"sub"} or ("sub" in route.key.claims and not sub):
        raise LinkError(
            f"{path}: route {route.name} builds its key from token claims "
            f"({', '.join(sorted(route.key.claims))}); pass --sub or share another path"
        )
    try:
        key = route.key.render(found.params, {"sub": sub} if sub else None)
    except ProxyError as exc:
        raise LinkError(f"{path}: {exc.reason}") from None
    return LinkTarget(route.name, route.settings.bucket, key)


def mint_link_token(
    secret: str,
    target: LinkTarget,
    ttl: int,
    sub: str | None = None,
    now: float | None = None,
) -> str:
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "aud": LINK_AUDIENCE,
        "rte": target.route,
        "bkt": target.bucket,
        "key": target.key,
        "mth": list(LINK_METHODS),
        "iat": issued,
        "exp": issued + ttl,
        "jti": secrets.token_urlsafe(12),
    }
    if sub:
        payload["sub"] = sub
    return jwt.encode(payload, secret, algorithm="HS256")


class LinkVerifier:
    def __init__(self, secret: str, leeway: float, clock: Callable[[], float]) -> None:
        self._secret = secret
        self._leeway = leeway
        self._clock = clock

    def verify(self, token: str, method: str) -> dict[str, Any]:
        """The link's claims if it is genuine, current and allows `method`; its target is
        checked after routing, with `check_target`."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=LINK_AUDIENCE,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["exp", "aud", "rte", "bkt", "key"],
                },
            )
        except jwt.PyJWTError:
            raise Unauthenticated("invalid link token", invalid_token=True) from None
        check_times(claims, self._clock(), self._leeway)
        methods = claims.get("mth")
        if not isinstance(methods, list) or method not in methods:
            raise Unauthenticated("link token does not allow this method", invalid_token=True)
        return claims

    @staticmethod
    def check_target(claims: dict[str, Any], target: LinkTarget) -> None:
        """Refuse (401) unless the request reached exactly the object the link was minted for."""
        if (claims.get("rte"), claims.get("bkt"), claims.get("key")) != (
            target.route,
            target.bucket,
            target.key,
        ):
            raise Unauthenticated("link token is for another object", invalid_token=True)
