"""The OpenID Connect provider as the proxy talks to it: discovery, the code exchange, the ID
token's checks and userinfo. All network I/O goes through one injected `ProviderHttp`.

The protocol rules come from Authlib (the token request, client authentication, the ID
token's claims: iss, aud, azp, exp, iat, nonce, at_hash); the signature is checked with the
provider's JWKS through the same cached, rate-limited key set as bearer tokens (jwks.py),
with only asymmetric algorithms the provider declares. Errors leave here as the proxy's own:
the provider unreachable or talking nonsense is 502, a code it refuses is 400, an ID token
that fails a check is 401.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import jwt
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from authlib.oidc.core import CodeIDToken
from joserfc.errors import JoseError

from ..config import ASYMMETRIC_ALGORITHMS, JwksSettings, LoginSettings
from ..errors import BadRequest, ProviderUnavailable, Unauthenticated
from ..jwks import JwksKeys, UnknownKey

log = logging.getLogger("proxy.login")


class ProviderHttp(Protocol):
    async def __call__(self, url: str, headers: Mapping[str, str] | None = None) -> Any: ...

    async def post_form(
        self, url: str, form: str, headers: Mapping[str, str]
    ) -> tuple[int, Any]: ...


@dataclass(frozen=True)
class Metadata:
    """What the discovery document says, checked (OpenID Connect Discovery 1.0, 4.3)."""

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    algorithms: frozenset[str]

    @classmethod
    def parse(cls, document: Any, issuer: str) -> Metadata:
        if not isinstance(document, dict):
            raise ValueError("discovery document is not a JSON object")
        if str(document.get("issuer", "")).rstrip("/") != issuer:
            # A document for another issuer would make us trust its keys for this one.
            raise ValueError("discovery document names another issuer")

        def endpoint(name: str, required: bool = True) -> str | None:
            value = document.get(name)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise ValueError(f"discovery document has no usable {name}")
            return value

        declared = document.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = frozenset(a for a in declared if a in ASYMMETRIC_ALGORITHMS)
        if not algorithms:
            raise ValueError("provider signs ID tokens with no algorithm the proxy accepts")
        return cls(
            authorization_endpoint=endpoint("authorization_endpoint") or "",
            token_endpoint=endpoint("token_endpoint") or "",
            jwks_uri=endpoint("jwks_uri") or "",
            userinfo_endpoint=endpoint("userinfo_endpoint", required=False),
            end_session_endpoint=endpoint("end_session_endpoint", required=False),
            algorithms=algorithms,
        )


@dataclass(frozen=True)
class Tokens:
    id_token: str
    access_token: str | None


class Provider:
    def __init__(
        self,
        login: LoginSettings,
        jwks: JwksSettings,
        leeway: int,
        http: ProviderHttp,
        clock: Callable[[], float],
    ) -> None:
        self._login = login
        self._jwks_settings = jwks
        self._leeway = leeway
        self._http = http
        self._clock = clock
        self._metadata: Metadata | None = None
        self._fetched_at = 0.0
        self._keys: JwksKeys | None = None
        secret = login.client_secret.get_secret_value() if login.client_secret else None
        # A public client proves itself by PKCE alone and names itself in the form.
        self._client_auth = ClientAuth(
            login.client_id, secret, "client_secret_basic" if secret else "none"
        )

    async def metadata(self) -> Metadata:
        """The discovery document, fetched on first use and again after jwks.cache_ttl; while
        the provider is down, the last good one keeps serving."""
        now = self._clock()
        if self._metadata is None or now - self._fetched_at >= self._jwks_settings.cache_ttl:
            url = self._login.issuer + "/.well-known/openid-configuration"
            try:
                metadata = Metadata.parse(await self._get(url), self._login.issuer)
            except ProviderUnavailable:
                if self._metadata is None:
                    raise
                return self._metadata
            except ValueError as exc:
                log.warning("sign-in provider discovery refused: %s", exc)
                if self._metadata is None:
                    raise ProviderUnavailable(f"provider discovery: {exc}") from None
                return self._metadata
            if self._keys is None or self._keys.url != metadata.jwks_uri:
                self._keys = JwksKeys(
                    metadata.jwks_uri,
                    self._http,
                    self._clock,
                    self._jwks_settings.cache_ttl,
                    self._jwks_settings.min_refresh_interval,
                )
            self._metadata, self._fetched_at = metadata, now
        return self._metadata

    async def exchange(self, code: str, verifier: str) -> Tokens:
        """Trade the authorization code (with its PKCE verifier) for tokens."""
        metadata = await self.metadata()
        form = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=self._login.redirect_uri,
            code_verifier=verifier,
        )
        # (types-Authlib leaves ClientAuth.prepare untyped.)
        _, headers, form = self._client_auth.prepare(  # type: ignore[no-untyped-call]
            "POST", metadata.token_endpoint, {"Accept": "application/json"}, form
        )
        status, body = await self._call(
            self._http.post_form(metadata.token_endpoint, form, headers)
        )
        if 400 <= status < 500:
            error = body.get("error") if isinstance(body, dict) else None
            raise BadRequest(
                f"provider refused the code ({_short(error)})",
                detail="sign-in code refused (used twice or expired); open the link again",
            )
        if status != 200 or not isinstance(body, dict):
            raise ProviderUnavailable(f"provider token endpoint answered {status}")
        id_token, access_token = body.get("id_token"), body.get("access_token")
        if not isinstance(id_token, str):
            raise ProviderUnavailable("provider answered without an ID token")
        return Tokens(id_token, access_token if isinstance(access_token, str) else None)

    async def verify(self, tokens: Tokens, nonce: str) -> dict[str, Any]:
        """The ID token's claims, if its signature (provider JWKS), issuer, audience, nonce
        and times are right; else 401."""
        metadata = await self.metadata()
        try:
            header = jwt.get_unverified_header(tokens.id_token)
        except jwt.PyJWTError:
            raise Unauthenticated("ID token malformed", invalid_token=True) from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in metadata.algorithms:
            raise Unauthenticated("ID token algorithm not allowed", invalid_token=True)
        keys = self._keys
        if keys is None:  # metadata() sets it; only a failed first discovery leaves it unset
            raise ProviderUnavailable("provider keys unknown")
        kid = header.get("kid")
        try:
            key = await keys.key_for(kid if isinstance(kid, str) else None)
        except UnknownKey:
            raise Unauthenticated(
                "ID token signed with an unknown key", invalid_token=True
            ) from None
        if key.alg is not None and key.alg != alg:
            raise Unauthenticated("ID token key is for another algorithm", invalid_token=True)
        try:
            signed: dict[str, Any] = jwt.decode(
                tokens.id_token,
                key.key,
                algorithms=[alg],
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
        except jwt.PyJWTError:
            raise Unauthenticated("ID token signature invalid", invalid_token=True) from None
        client_id = self._login.client_id
        claims = CodeIDToken(
            signed,
            header,
            options={
                "iss": {"essential": True, "value": self._login.issuer},
                "aud": {"essential": True, "values": [client_id]},
                "sub": {"essential": True},
            },
            params={"nonce": nonce, "client_id": client_id, "access_token": tokens.access_token},
        )
        try:
            claims.validate(now=int(self._clock()), leeway=self._leeway)
        except JoseError as exc:
            raise Unauthenticated(
                f"ID token refused ({_short(exc.error)}: {_short(exc.description)})",
                invalid_token=True,
            ) from None
        if not isinstance(signed.get("sub"), str):
            raise Unauthenticated("ID token without a subject", invalid_token=True)
        return signed

    async def userinfo(self, access_token: str | None, sub: str) -> dict[str, Any]:
        """The userinfo endpoint's claims, for the ID token's subject only (OIDC Core 5.3.2)."""
        metadata = await self.metadata()
        if metadata.userinfo_endpoint is None or access_token is None:
            raise ProviderUnavailable("auth.login.userinfo is on but the provider has none")
        info = await self._get(
            metadata.userinfo_endpoint, {"Authorization": f"Bearer {access_token}"}
        )
        if not isinstance(info, dict) or info.get("sub") != sub:
            raise ProviderUnavailable("provider userinfo is for another subject")
        return info

    async def _get(self, url: str, headers: Mapping[str, str] | None = None) -> Any:
        return await self._call(self._http(url, headers))

    async def _call(self, call: Any) -> Any:
        """Await one provider call within auth.login.timeout; its failures become 502."""
        try:
            async with asyncio.timeout(self._login.timeout):
                return await call
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderUnavailable(
                f"sign-in provider call failed ({type(exc).__name__})"
            ) from None


def _short(value: Any) -> str:
    """A provider's words for the log: bounded, one line, never a credential (error codes
    and claim names only reach here)."""
    return "".join(ch for ch in str(value)[:80] if ch.isprintable())
