"""Share links: tokens bound to one exact path (and GET/HEAD), signed with auth.link_secret.

An admin mints one with `python -m proxy link` and mails the URL. The link itself is the
authorization for that path: it goes through the route's normal delivery, and is refused
(401) on any other path. Its audience keeps it from ever passing as a normal access token,
and normal tokens from passing as links. No I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt

from .auth import check_times
from .errors import Unauthenticated

LINK_AUDIENCE = "s3-private-proxy/link"
LINK_METHODS = ("GET", "HEAD")


def mint_link_token(
    secret: str, path: str, ttl: int, sub: str | None = None, now: float | None = None
) -> str:
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "aud": LINK_AUDIENCE,
        "pth": path,
        "mth": list(LINK_METHODS),
        "iat": issued,
        "exp": issued + ttl,
    }
    if sub:
        payload["sub"] = sub
    return jwt.encode(payload, secret, algorithm="HS256")


class LinkVerifier:
    def __init__(self, secret: str, leeway: float, clock: Callable[[], float]) -> None:
        self._secret = secret
        self._leeway = leeway
        self._clock = clock

    def verify(self, token: str, path: str, method: str) -> dict[str, Any]:
        """`path` is the request's decoded path; the link must name exactly that path."""
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
                    "require": ["exp", "pth", "aud"],
                },
            )
        except jwt.PyJWTError:
            raise Unauthenticated("invalid link token", invalid_token=True) from None
        check_times(claims, self._clock(), self._leeway)
        if claims.get("pth") != path:
            raise Unauthenticated("link token is for another path", invalid_token=True)
        methods = claims.get("mth")
        if not isinstance(methods, list) or method not in methods:
            raise Unauthenticated("link token does not allow this method", invalid_token=True)
        return claims
