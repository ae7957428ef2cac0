"""The two tokens sign-in signs with auth.login.session_secret. No I/O.

- The *flow* token lives in a short-lived cookie between the redirect to the provider and the
  callback: it holds the `state`, the `nonce`, the PKCE verifier and where to go back to, so
  no server-side state is kept and any worker or replica can finish a sign-in.
- The *session* token is what the session cookie holds afterwards: the provider's subject
  and mapped claims, with `iss` (this proxy's public URL), `iat`, `exp` and a `jti`, verified
  by auth.TokenVerifier like any bearer token (and revocable by iss+sub or jti).
Each has its own audience, so neither can pass as the other.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from ..auth import MAX_TOKEN_BYTES, check_times
from ..config import SESSION_AUDIENCE, LoginSettings
from ..errors import BadRequest

FLOW_AUDIENCE = "s3-private-proxy/sign-in"
FLOW_COOKIE_PREFIX = "signin_"  # + the flow's state: several tabs may sign in at once
STATE_PATTERN = re.compile(r"[A-Za-z0-9]{32,128}")
# Browsers drop cookies past 4096 bytes (name, value and attributes together): a session that
# does not fit would send the browser round the sign-in for ever.
MAX_SESSION_BYTES = min(MAX_TOKEN_BYTES, 3800)


@dataclass(frozen=True)
class Flow:
    """One sign-in between the redirect to the provider and the callback."""

    state: str
    nonce: str
    verifier: str  # PKCE code_verifier
    next: str  # the path to go back to

    @property
    def cookie(self) -> str:
        return FLOW_COOKIE_PREFIX + self.state


def encode_flow(flow: Flow, secret: str, now: float, ttl: int) -> str:
    issued = int(now)
    payload = {
        "aud": FLOW_AUDIENCE,
        "st": flow.state,
        "nn": flow.nonce,
        "cv": flow.verifier,
        "nx": flow.next,
        "iat": issued,
        "exp": issued + ttl,
    }
    return jwt.encode(payload, secret, algorithm="HS256")


def decode_flow(token: str, state: str, secret: str, now: float) -> Flow:
    """The flow this cookie holds, if it is ours, current, and for `state`; else 400."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=FLOW_AUDIENCE,
            options={"verify_exp": False, "verify_iat": False, "require": ["exp"]},
        )
        check_times(claims, now, 0)
        fields = [claims.get(name) for name in ("st", "nn", "cv", "nx")]
    except Exception:
        raise BadRequest(
            "sign-in cookie invalid or expired",
            detail="sign-in expired or was not started in this browser; open the link again",
        ) from None
    strings = [value for value in fields if isinstance(value, str)]
    if len(strings) != len(fields):
        raise BadRequest("sign-in cookie incomplete", detail="sign-in failed; open the link again")
    flow = Flow(*strings)
    if not hmac.compare_digest(flow.state.encode(), state.encode()):
        raise BadRequest("sign-in state mismatch", detail="sign-in failed; open the link again")
    return flow


def session_claims(login: LoginSettings, provider: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The session token's claims from the provider's (ID token, then userinfo) claims."""
    issued = int(now)
    expires = int(min(float(provider["exp"]), issued + login.max_age))
    claims: dict[str, Any] = {
        "iss": login.public_url,
        "aud": SESSION_AUDIENCE,
        "sub": provider["sub"],
        "idp": login.issuer,
        "iat": issued,
        "exp": expires,
        "jti": secrets.token_urlsafe(16),
    }
    for name, path in login.claims.items():
        value = _lookup(provider, path)
        if value is not None:
            claims[name] = value
    return claims


def mint_session(claims: Mapping[str, Any], secret: str) -> str:
    return jwt.encode(dict(claims), secret, algorithm="HS256")


@dataclass(frozen=True)
class Session:
    """One of this proxy's session cookies, as sign-out reads it."""

    sub: str | None  # as logged (cut at 256 characters)
    iss: str
    jti: str | None  # what sign-out revokes
    exp: float | None


def read_session(token: str, secret: str, login: LoginSettings) -> Session | None:
    """The session this cookie holds, its signature checked and its expiry not (a sign-out
    may come after it); None for anything that is not one of this proxy's sessions."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=SESSION_AUDIENCE,
            issuer=login.public_url,
            options={"verify_exp": False, "verify_iat": False},
        )
    except jwt.PyJWTError:
        return None
    sub, jti, exp = claims.get("sub"), claims.get("jti"), claims.get("exp")
    return Session(
        str(sub)[:256] if sub is not None else None,
        login.public_url,
        jti if isinstance(jti, str) else None,
        float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None,
    )


def _lookup(claims: Mapping[str, Any], path: str) -> Any:
    """`realm_access.roles` -> claims["realm_access"]["roles"]; a claim named with a dot
    (some providers use URLs as claim names) is found whole first."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
