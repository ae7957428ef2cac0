"""Finds the caller's token in the configured sources and verifies it. No network I/O.

The key is chosen by the token's `alg` *family* (HMAC -> the shared secret, anything else -> the
public key), and only after `alg` passed the configured allow-list, so an HS256 token "signed"
with the public key as its secret is refused. Time checks use an injected clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from .config import HMAC_ALGORITHMS, AuthSettings, IssuerSettings
from .errors import Unauthenticated
from .jwks import FetchJson, JwksKeys, UnknownKey

MAX_TOKEN_BYTES = 8192
VERIFIED_CACHE_SIZE = 10_000
# Tokens up to this long are remembered by themselves, longer ones by a digest (so that the
# cache's keys stay under ~10 MiB however large the tokens sent).
_KEYED_BY_ITSELF = 1024
# A remembered token is checked again after this long, so that a key withdrawn from a JWKS
# (or a changed config) stops its tokens within a minute, not only at their exp.
VERIFIED_TTL = 60.0
Clock = Callable[[], float]


def extract_token(
    settings: AuthSettings,
    headers: Mapping[str, str],
    cookies: Mapping[str, str] | None,
    query: Mapping[str, str],
) -> tuple[str, str] | None:
    """Return (source description, token) from the first configured source present.
    `cookies` None means "parse the Cookie header when a cookie source is reached"."""
    return find_token(token_sources(settings), headers, cookies, query)


def find_token(
    sources: TokenSources,
    headers: Mapping[str, str],
    cookies: Mapping[str, str] | None,
    query: Mapping[str, str],
) -> tuple[str, str] | None:
    """`extract_token` with the sources' plan in hand (`token_sources`, kept by a caller
    that answers every request with one config)."""
    for kind, name, where in sources:
        if kind is _HEADER:
            value = headers.get(name)
            if value is None:
                continue
            token = value.strip()
        elif kind is _BEARER:
            value = headers.get(name)
            if value is None:
                continue
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                continue
            token = credentials.strip()
        elif kind is _COOKIE:
            if cookies is None:
                cookies = parse_cookie_header(headers.get("Cookie"))
            token = cookies.get(name, "").strip()
        else:
            token = query.get(name, "").strip()
        if token:
            return where, token
    return None


_HEADER, _BEARER, _COOKIE, _QUERY = "header", "bearer", "cookie", "query"
_Source = tuple[str, str, str]  # (kind, the header, cookie or parameter name, description)
TokenSources = tuple[_Source, ...]


def token_sources(settings: AuthSettings) -> TokenSources:
    """The configured sources as `find_token` walks them: what a config fixes (each one's
    kind and description), worked out once by whoever keeps that config (Access, per
    config: a reload makes a new one), not on every request."""
    plan: list[_Source] = []
    for source in settings.sources:
        if source.header:
            bearer = source.header.lower() == "authorization"
            where = f"header {source.header}"
            plan.append((_BEARER if bearer else _HEADER, source.header, where))
        elif source.cookie:
            plan.append((_COOKIE, source.cookie, f"cookie {source.cookie}"))
        else:
            plan.append((_QUERY, source.query or "", f"query {source.query}"))
    return tuple(plan)


def parse_cookie_header(header: str | None) -> dict[str, str]:
    """Split a Cookie header the way browsers send it (RFC 6265 5.4): `a=1; b=2`.

    Deliberately lenient and by hand: http.cookies stops at the first cookie it cannot parse,
    so one odd cookie from another app on the same domain would hide the token. The first
    occurrence of a name wins (browsers send the most specific path first).
    """
    cookies: dict[str, str] = {}
    if not header:
        return cookies
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name or name in cookies:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies[name] = value
    return cookies


class _Issuer:
    """Keys and checks for one issuer."""

    def __init__(self, settings: IssuerSettings, jwks: JwksKeys | None) -> None:
        self.settings = settings
        self.allowed = frozenset(settings.algorithms)
        self.secret = settings.secret.get_secret_value() if settings.secret else None
        self.public_key = settings.public_key
        self.jwks = jwks

    async def key_for(self, alg: str, kid: Any) -> Any:
        if alg in HMAC_ALGORITHMS:
            return self.secret
        if self.public_key:
            return self.public_key
        if self.jwks is None:
            return None
        try:
            jwk = await self.jwks.key_for(kid if isinstance(kid, str) else None)
        except UnknownKey:
            raise Unauthenticated("unknown key id", invalid_token=True) from None
        if jwk.alg is not None and jwk.alg != alg:
            raise Unauthenticated("key is not for this algorithm", invalid_token=True)
        return jwk.key


class TokenVerifier:
    """Verifies tokens from one or several issuers; a token is checked only against the keys
    of the issuer its (unverified) `iss` names."""

    def __init__(
        self,
        settings: AuthSettings,
        clock: Clock = time.time,
        fetch_json: FetchJson | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._jwt = jwt.PyJWT()
        issuers = []
        for issuer in settings.issuer_list():
            jwks = None
            if issuer.jwks_url:
                if fetch_json is None:
                    raise ValueError("a JWKS issuer needs fetch_json")
                jwks = JwksKeys(
                    issuer.jwks_url,
                    fetch_json,
                    clock,
                    settings.jwks.cache_ttl,
                    settings.jwks.min_refresh_interval,
                )
            issuers.append(_Issuer(issuer, jwks))
        self._single = issuers[0] if len(issuers) == 1 else None
        # token (or a long one's digest) -> (claims, when the signature was checked, its
        # (exp, nbf, iat)); oldest first, bounded at VERIFIED_CACHE_SIZE.
        self._verified: dict[str | bytes, tuple[dict[str, Any], float, _Times]] = {}
        self._by_name = {i.settings.issuer: i for i in issuers}
        self._key_sets = [i.jwks for i in issuers if i.jwks is not None]
        self.hits = 0  # verified-token cache lookups answered (read by the metrics)
        self.misses = 0

    async def missing_key_sets(self) -> list[str]:
        """The JWKS URLs that hold no keys even after a fetch: tokens from them would fail."""
        loaded = await asyncio.gather(*(keys.loaded() for keys in self._key_sets))
        return [keys.url for keys, ok in zip(self._key_sets, loaded, strict=True) if not ok]

    async def verify(self, token: str) -> dict[str, Any]:
        """Return the token's claims, or raise Unauthenticated with a loggable reason.

        A token that verified once is remembered (in a bounded cache) so repeat requests skip
        the signature check; its time claims are checked again on every use, and after
        VERIFIED_TTL its signature too. The returned claims must not be modified.

        The cache is a dict keyed by the token itself (a long one by its BLAKE2b digest): a
        hit needs the very string that was verified, byte for byte, which is stricter than a
        digest. The lookup need not be constant-time: str hashes are SipHash under a
        per-process random key (no collision flooding), the string comparison runs only
        after a 64-bit hash under that secret key matched, and a hit only ever answers a
        token with its own verified claims. Eviction is oldest-first: a hot token's entry is
        re-verified at most once per VERIFIED_TTL anyway.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("token too large", invalid_token=True)
        key: str | bytes = (
            token
            if len(token) <= _KEYED_BY_ITSELF
            else hashlib.blake2b(token.encode(), digest_size=16).digest()
        )
        verified = self._verified
        cached = verified.get(key)
        now = self._clock()
        if cached is not None and now - cached[1] < VERIFIED_TTL:
            self.hits += 1
            # The claims' types were checked when they were verified: only the clock moved.
            check_clock(cached[2], now, self._settings.leeway)
            return cached[0]
        self.misses += 1
        claims = await self._verify_signature(token)
        self._check_times(claims)
        times = (claims.get("exp"), claims.get("nbf"), claims.get("iat"))
        verified.pop(key, None)  # a re-verified token is the newest entry again
        verified[key] = (claims, self._clock(), times)
        if len(verified) > VERIFIED_CACHE_SIZE:
            del verified[next(iter(verified))]
        return claims

    async def _verify_signature(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = (
                {} if self._single else self._jwt.decode(token, options={"verify_signature": False})
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthenticated("malformed token", invalid_token=True) from None
        iss = unverified.get("iss")
        issuer = self._single or (self._by_name.get(iss) if isinstance(iss, str) else None)
        if issuer is None:
            raise Unauthenticated("unknown issuer", invalid_token=True)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.allowed:
            raise Unauthenticated(f"algorithm {str(alg)[:16]!r} not allowed", invalid_token=True)
        key = await issuer.key_for(alg, header.get("kid"))
        if not key:
            raise Unauthenticated("no key configured for algorithm", invalid_token=True)
        return self._decode(token, key, alg, issuer.settings)

    def _decode(self, token: str, key: Any, alg: str, issuer: IssuerSettings) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = self._jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                options={
                    # Time claims are checked below against the injected clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": issuer.audience is not None,
                    "verify_iss": issuer.issuer is not None,
                    "require": ["exp"] if self._settings.require_exp else [],
                },
            )
        except jwt.InvalidSignatureError:
            raise Unauthenticated("bad signature", invalid_token=True) from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("wrong audience", invalid_token=True) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("wrong issuer", invalid_token=True) from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"missing claim {exc.claim!r}", invalid_token=True) from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthenticated("invalid token", invalid_token=True) from None
        return claims

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        check_times(claims, self._clock(), self._settings.leeway)


def _is_finite_number(value: Any) -> bool:
    # bool is an int; NaN and infinity (which Python's json accepts) never expire.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_times(claims: Mapping[str, Any], now: float, leeway: float) -> None:
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if not _is_finite_number(value):
            raise Unauthenticated(f"claim {name!r} is not a number", invalid_token=True)
    check_clock((claims.get("exp"), claims.get("nbf"), claims.get("iat")), now, leeway)


_Times = tuple[Any, Any, Any]  # (exp, nbf, iat), each a finite number or None


def check_clock(times: _Times, now: float, leeway: float) -> None:
    """The time checks of `check_times` on claims whose types it already accepted."""
    exp, nbf, iat = times
    if exp is not None and now >= exp + leeway:
        raise Unauthenticated("token expired", invalid_token=True)
    if nbf is not None and now < nbf - leeway:
        raise Unauthenticated("token not yet valid", invalid_token=True)
    if iat is not None and now < iat - leeway:
        raise Unauthenticated("token issued in the future", invalid_token=True)


def issue_token(
    settings: AuthSettings,
    claims: Mapping[str, Any],
    ttl: int,
    clock: Clock = time.time,
) -> str:
    """Sign a token with the configured HMAC secret (for trying the proxy by hand and tests)."""
    for issuer in settings.issuer_list():
        algorithm = next((alg for alg in issuer.algorithms if alg in HMAC_ALGORITHMS), None)
        if algorithm is not None and issuer.secret is not None:
            break
    else:
        raise ValueError("no issuer has an HS* algorithm with a secret; cannot sign")
    now = int(clock())
    payload: dict[str, Any] = {"iat": now, "exp": now + ttl, **claims}
    if issuer.issuer and "iss" not in payload:
        payload["iss"] = issuer.issuer
    if issuer.audience and "aud" not in payload:
        payload["aud"] = issuer.audience
    return jwt.encode(payload, issuer.secret.get_secret_value(), algorithm=algorithm)
