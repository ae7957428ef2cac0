"""A JSON Web Key Set fetched over HTTPS, cached, and refreshed under strict limits.

- Keys are picked by `kid`; an unknown `kid` triggers a refetch at most once per
  `min_refresh_interval`, so a flood of forged kids cannot hammer the provider.
- A set older than `cache_ttl` is refetched on the next request; if the provider is down, the
  cached set keeps serving.
- Concurrent requests share one fetch. `jku`/`x5u` token headers are never looked at: keys come
  only from the configured URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

log = logging.getLogger("proxy.jwks")

FetchJson = Callable[[str], Awaitable[Any]]


@dataclass(frozen=True)
class Jwk:
    key: Any  # a public key object for pyjwt
    alg: str | None  # the algorithm the set declares for this key, if any


class UnknownKey(Exception):
    """No key for this token's `kid` (after any refetch the limits allowed)."""


class JwksKeys:
    def __init__(
        self,
        url: str,
        fetch_json: FetchJson,
        clock: Callable[[], float],
        cache_ttl: float,
        min_refresh_interval: float,
    ) -> None:
        self._url = url
        self._fetch_json = fetch_json
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._min_interval = min_refresh_interval
        self._keys: dict[str | None, Jwk] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._inflight: asyncio.Task[None] | None = None

    async def key_for(self, kid: str | None) -> Jwk:
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at >= self._cache_ttl:
            await self._refresh_if_allowed(now)
        key = self._lookup(kid)
        if key is None:
            await self._refresh_if_allowed(now)
            key = self._lookup(kid)
        if key is None:
            raise UnknownKey
        return key

    @property
    def url(self) -> str:
        return self._url

    async def loaded(self) -> bool:
        """Whether keys are held; when none are, fetch them first (within the refresh limits,
        so a readiness probe cannot hammer the provider either)."""
        if not self._keys:
            await self._refresh_if_allowed(self._clock())
        return bool(self._keys)

    def _lookup(self, kid: str | None) -> Jwk | None:
        if kid is None:
            # A token without `kid` is usable only when the set holds exactly one key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh_if_allowed(self, now: float) -> None:
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        if self._attempted_at is not None and now - self._attempted_at < self._min_interval:
            return
        self._attempted_at = now
        self._inflight = asyncio.ensure_future(self._refresh())
        try:
            await asyncio.shield(self._inflight)
        finally:
            self._inflight = None

    async def _refresh(self) -> None:
        try:
            document = await self._fetch_json(self._url)
            keys = _parse_key_set(document)
        except Exception as exc:
            log.warning(
                "JWKS fetch from %s failed (%s); keeping %d cached keys",
                self._url,
                type(exc).__name__,
                len(self._keys),
            )
            return
        self._keys = keys
        self._fetched_at = self._clock()


def _parse_key_set(document: Any) -> dict[str | None, Jwk]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set")
    keys: dict[str | None, Jwk] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            continue  # a shared secret published in a key set would let anyone sign
        try:
            key = jwt.PyJWK.from_dict(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue  # an unsupported or malformed key must not hide the others
        kid = entry.get("kid")
        alg = entry.get("alg")
        keys[kid if isinstance(kid, str) else None] = Jwk(
            key.key, alg if isinstance(alg, str) else None
        )
    if not keys:
        raise ValueError("no usable signing keys")
    return keys


MAX_JWKS_BYTES = 1024 * 1024


class HttpJson:
    """GET (or POST a form for) a JSON document with one shared aiohttp session, opened at
    start-up. Used for JWKS and for the sign-in provider (proxy/login)."""

    def __init__(self, timeout: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(self, url: str, headers: Mapping[str, str] | None = None) -> Any:
        if self._session is None:
            raise RuntimeError("HttpJson used before open()")
        async with self._session.get(url, allow_redirects=False, headers=headers) as response:
            response.raise_for_status()
            return await _read_json(response)

    async def post_form(self, url: str, form: str, headers: Mapping[str, str]) -> tuple[int, Any]:
        """POST an urlencoded form; (status, JSON body) whatever the status, so that the
        caller can tell a refusal (4xx with an OAuth error) from an outage."""
        if self._session is None:
            raise RuntimeError("HttpJson used before open()")
        headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        async with self._session.post(
            url, data=form.encode(), headers=headers, allow_redirects=False
        ) as response:
            return response.status, await _read_json(response)


async def _read_json(response: aiohttp.ClientResponse) -> Any:
    body = await response.content.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("JSON document too large")
    return json.loads(body)
