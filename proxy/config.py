"""The typed, validated config model and load_config(); errors name the key path and the fix.

Loading is: YAML (errors carry the line) -> ${VAR} expansion (errors name the variable) ->
pydantic shape check (unknown keys refused) -> cross-checks that need several keys at once
(key templates vs match patterns, algorithms vs keys). Nothing here does network I/O.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import jwt
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .cloudfront.scope import CookieScope
from .cloudfront.settings import (
    CloudFrontSettings,
    LoadedCloudFront,
    check_cookie_domain,
    check_route,
    load_signer,
    route_field_problems,
)
from .cloudfront.signer import Signer
from .contenttype import DEFAULT_INLINE_TYPES, InlineTypes, check_pattern
from .policy import Rule, compile_rule
from .presign import SIGV4_MAX_EXPIRES
from .redisurl import check_url as check_redis_url
from .redisurl import is_sentinel as is_sentinel_url
from .redisurl import uses_tls
from .routing import KeyTemplate, PathPattern, TemplateError, compile_pattern, compile_template
from .ssec import CustomerKey

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_MIN_HMAC_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# How to make a secret, named wherever one is missing or weak.
RANDOM_KEY_COMMAND = "python -c 'import secrets; print(secrets.token_urlsafe(64))'"


class ConfigError(Exception):
    """One or more config mistakes; str() is one line per mistake: `key.path: what and fix`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _proxy_network(value: str) -> str:
    """A CIDR (or a single address) a trusted proxy connects from, in canonical form."""
    try:
        network = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            loose = ipaddress.ip_network(value.strip(), strict=False)
            raise ValueError(f"has host bits set; did you mean {loose}?") from None
        raise ValueError(
            "must be an IP network in CIDR form, e.g. 10.0.0.0/8, 192.168.1.7/32 or fd00::/8"
        ) from None
    if network.prefixlen == 0:
        raise ValueError(
            "trusts every address, so any client could name itself in X-Forwarded-For; list "
            "only the networks your load balancers or ingress connect from"
        )
    return str(network)


class ListenSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    shutdown_grace: float = Field(30.0, ge=0)  # seconds in-flight requests get after SIGTERM
    # Seconds to go on serving after SIGTERM, with `draining` set, before the port closes:
    # load balancers need that long to stop sending (Kubernetes: a few seconds). 0: close now.
    drain_delay: float = Field(0.0, ge=0, le=3600)
    workers: int = Field(1, ge=1, le=64)  # processes sharing the port (SO_REUSEPORT)
    # Where `serve` writes its pid, for `python -m proxy reload`; relative to the config file.
    pid_file: Path | None = None
    # Load balancers and ingresses (CIDRs) whose forwarding headers name the client: from a
    # peer in one of them, the client is the rightmost untrusted address of forwarded_header
    # (proxy/forwarded.py). Empty: every peer is the client itself and the headers are ignored.
    trusted_proxies: list[Annotated[str, AfterValidator(_proxy_network)]] = Field(
        default_factory=list, max_length=256
    )
    # Which header a trusted proxy names the client in: X-Forwarded-For (with
    # X-Forwarded-Proto), or RFC 7239 Forwarded (for= and proto=). Only one is read: a proxy
    # that sets one usually passes the other through from the client unchanged.
    forwarded_header: Literal["X-Forwarded-For", "Forwarded"] = "X-Forwarded-For"
    # Connections from trusted_proxies start with a PROXY protocol header (v1 or v2) naming
    # the client, as L4 load balancers send it; others must not send one.
    proxy_protocol: bool = False


class S3Settings(_Model):
    # Who talks to S3: `builtin` signs each request itself and keeps its own keep-alive pool
    # (the fast path); `aiobotocore` sends every request through one aiobotocore client.
    engine: Literal["builtin", "aiobotocore"] = "builtin"
    region: str = "us-east-1"
    endpoint_url: str | None = None
    public_endpoint_url: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=10)
    max_connections: int = Field(64, ge=1, le=10000)
    # Overall bound on S3 starting to answer, including retries and their backoff.
    request_timeout: float = Field(60.0, gt=0)
    # The longest a request waits for S3's response head (retries included), whichever of
    # this and request_timeout ends first: past it, 504 at once. A healthy S3 answers in tens
    # of milliseconds; while it is stalled (a brownout), clients get a clear answer in
    # seconds instead of waiting read_timeout for nothing.
    first_byte_timeout: float = Field(5.0, gt=0, le=3600)
    # How long a request waits for a free pooled connection before a fast 503 with
    # Retry-After. Short: a pool held by slow downloads frees up in seconds or not at all, and
    # everyone waiting the whole request_timeout for a 504 is what made one client enough to
    # take the proxy down.
    pool_timeout: float = Field(2.0, gt=0)
    # Also the read size of a relayed body (upstream.py rule 5): each read and write costs the
    # kernel about as much as its bytes' copy at 128 KiB, so 256 KiB (docs/performance.md).
    chunk_size: int = Field(256 * 1024, ge=4096, le=16 * 1024 * 1024)
    # Cache-Control that S3 is asked to answer a presigned GET with, for routes that set no
    # cache_control: a private file must not be stored by shared caches. null signs none.
    redirect_cache_control: str | None = "private"

    @field_validator("redirect_cache_control")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or re.search(r"[\r\n\x00]", value)):
            raise ValueError("must be a non-empty single line (no CR, LF or NUL), or null")
        return value

    @field_validator("endpoint_url", "public_endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # Empty means unset (AWS), so that `${S3_ENDPOINT_URL:-}` works with the variable
        # empty or absent.
        if value is not None and not value.strip():
            return None
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:9000")
        return value


class TokenSource(_Model):
    header: str | None = None
    cookie: str | None = None
    query: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TokenSource:
        given = [k for k in ("header", "cookie", "query") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "each source names exactly one of header, cookie or query, "
                "e.g. {header: Authorization}"
            )
        return self

    @property
    def kind(self) -> str:
        return "header" if self.header else "cookie" if self.cookie else "query"

    @property
    def name(self) -> str:
        return self.header or self.cookie or self.query or ""


def _default_sources() -> list[TokenSource]:
    return [
        TokenSource(header="Authorization"),
        TokenSource(cookie="access_token"),
        TokenSource(query="token"),
    ]


class IssuerSettings(_Model):
    """One token issuer: which algorithms it uses and where its keys come from."""

    name: str | None = Field(None, min_length=1)  # how routes' `issuers` may refer to it
    issuer: str | None = None
    audience: str | list[str] | None = None
    algorithms: list[str] = Field(default_factory=lambda: ["HS256"], min_length=1)
    secret: SecretStr | None = None
    public_key_file: Path | None = None
    public_key: str | None = None  # inline PEM; filled from public_key_file at load
    jwks_url: str | None = None

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        for alg in value:
            if alg.lower() == "none":
                raise ValueError("'none' is never accepted: unsigned tokens would let anyone in")
            if alg not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS:
                known = ", ".join(sorted(HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS))
                raise ValueError(f"unknown algorithm {alg!r}; choose from {known}")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _https_jwks(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ValueError(
                "must be an https:// URL (plain http is allowed only on loopback, for tests)"
            )
        return value


class JwksSettings(_Model):
    cache_ttl: float = Field(3600.0, gt=0)  # refetch a key set this old on the next request
    min_refresh_interval: float = Field(60.0, ge=0)  # unknown `kid`s refetch at most this often
    timeout: float = Field(5.0, gt=0)


# The audience of the proxy's own session tokens (browser sign-in, auth.login): no other
# token carries it, and they carry no other.
SESSION_AUDIENCE = "s3-private-proxy/session"
# Claims a session token sets itself; a claims mapping may not overwrite them.
_SESSION_OWN_CLAIMS = frozenset(
    {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "idp", "nonce", "azp", "at_hash"}
)


def _loopback_or_https(value: str) -> str:
    parts = urlsplit(value)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise ValueError(
            "must be an https:// URL (plain http is allowed only on loopback, for tests)"
        )
    return value


class LoginCookieSettings(_Model):
    """The session cookie a browser carries after sign-in. It must be one of auth.sources."""

    name: str = Field("access_token", pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class LoginSettings(_Model):
    """Browser sign-in with an OpenID Connect provider (Authorization Code flow with PKCE).

    After sign-in the proxy sets a session cookie holding a token it signs itself with
    `session_secret`; that token is checked like any other, as the issuer named `name`."""

    name: str = Field("login", min_length=1)  # how routes' `issuers` refer to signed-in users
    issuer: str  # the provider's issuer URL; its discovery document is read from there
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None  # none: a public client (PKCE alone)
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])
    # This proxy's address as browsers reach it: the redirect URI registered with the
    # provider is public_url + redirect_path, and https here makes the cookies Secure.
    public_url: str
    redirect_path: str = "/_auth/callback"
    login_path: str = "/_auth/login"  # GET ?next=/path starts a sign-in by hand
    logout_path: str = "/_auth/logout"
    # A path on this proxy the provider sends the browser to after signing out; it must be
    # registered with the provider as a post-logout redirect URI. None: the provider's page.
    logout_redirect: str | None = None
    session_secret: SecretStr
    # A session ends at the ID token's expiry, or this many seconds after sign-in if sooner.
    max_age: int = Field(12 * 3600, ge=60, le=30 * 86400)
    flow_timeout: int = Field(600, ge=30, le=3600)  # seconds to finish signing in
    userinfo: bool = False  # also read claims from the provider's userinfo endpoint
    # session claim -> the provider's claim (dots reach into objects: realm_access.roles)
    claims: dict[str, str] = Field(
        default_factory=lambda: {
            "email": "email",
            "name": "name",
            "groups": "groups",
            "roles": "roles",
            "role": "role",
        }
    )
    cookie: LoginCookieSettings = Field(default_factory=LoginCookieSettings)
    timeout: float = Field(10.0, gt=0, le=60)  # each call to the provider

    @field_validator("issuer", "public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _loopback_or_https(value).rstrip("/")

    @field_validator("redirect_path", "login_path", "logout_path")
    @classmethod
    def _fixed(cls, value: str) -> str:
        return _fixed_path(value, "/_auth/callback")

    @field_validator("logout_redirect")
    @classmethod
    def _local_path(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or value.startswith("//")):
            raise ValueError("must be a path on this proxy starting with '/', e.g. /")
        return value

    @field_validator("scopes")
    @classmethod
    def _openid(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError("must include openid (sign-in needs an ID token)")
        if any(not scope or " " in scope for scope in value):
            raise ValueError("each scope is one word, e.g. [openid, email, profile]")
        return value

    @field_validator("claims")
    @classmethod
    def _mapping(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = sorted(set(value) & _SESSION_OWN_CLAIMS)
        if reserved:
            raise ValueError(
                f"{reserved[0]!r} is set by the proxy itself; map the provider's claim to "
                "another name"
            )
        return value

    @field_validator("client_secret")
    @classmethod
    def _empty_secret_is_public(cls, value: SecretStr | None) -> SecretStr | None:
        # `client_secret: ${OIDC_CLIENT_SECRET:-}` with the variable empty: a public client.
        return value if value is not None and value.get_secret_value() else None

    @property
    def secure(self) -> bool:
        """Cookies get `Secure` unless the proxy is reached over plain http on loopback."""
        return self.public_url.startswith("https://")

    @property
    def redirect_uri(self) -> str:
        return self.public_url + self.redirect_path

    def session_issuer(self) -> IssuerSettings:
        """The proxy's own sessions as an issuer: routes trust them by `name`."""
        return IssuerSettings(
            name=self.name,
            issuer=self.public_url,
            audience=SESSION_AUDIENCE,
            algorithms=["HS256"],
            secret=self.session_secret,
        )


class AuthSettings(IssuerSettings):
    """The top-level issuer fields are shorthand for a single issuer; `issuers` lists several.
    With `login` and neither, signed-in browsers are the only issuer."""

    issuers: list[IssuerSettings] | None = Field(None, min_length=1)
    jwks: JwksSettings = Field(default_factory=JwksSettings)
    leeway: int = Field(30, ge=0, le=3600)
    require_exp: bool = True
    sources: list[TokenSource] = Field(default_factory=_default_sources, min_length=1)
    link_secret: SecretStr | None = None
    link_param: str = Field("link", min_length=1)

    @field_validator("link_secret")
    @classmethod
    def _empty_link_secret_is_off(cls, value: SecretStr | None) -> SecretStr | None:
        # `link_secret: ${LINK_SECRET:-}` with the variable empty or absent: links are off.
        return value if value is not None and value.get_secret_value() else None

    # Claims holding space-separated lists (OAuth `scope`): a rule's literal value may match
    # one item of them. Every other claim must equal the rule's value exactly.
    list_claims: list[str] = Field(default_factory=lambda: ["scope"])

    login: LoginSettings | None = None

    @property
    def has_shorthand_issuer(self) -> bool:
        """Whether the top-level fields configure an issuer (always, without `login`)."""
        if self.issuers:
            return False
        return self.login is None or any(k in self.model_fields_set for k in _ISSUER_KEYS)

    def issuer_list(self) -> list[IssuerSettings]:
        listed: list[IssuerSettings] = (
            list(self.issuers) if self.issuers else [self] if self.has_shorthand_issuer else []
        )
        if self.login is not None:
            listed.append(self.login.session_issuer())
        return listed


Delivery = Literal["stream", "redirect", "auto", "cloudfront"]
Method = Literal["GET", "HEAD", "PUT", "POST"]
# Methods that write: a route listing one needs `upload` settings.
UPLOAD_METHODS = ("PUT", "POST")


def _all_methods() -> list[Method]:
    return ["GET", "HEAD"]


class RateSettings(_Model):
    """A token bucket: `rate` requests per second on average, bursts of up to `burst`."""

    rate: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimitSettings(_Model):
    per_client: RateSettings | None = None  # keyed by the client's IP address
    per_subject: RateSettings | None = None  # keyed by the token's `sub`


class LimitsSettings(_Model):
    max_streams: int = Field(512, ge=1)  # concurrent streamed responses per process; 503 past it
    # Each streamed response holds an S3 connection for as long as its client reads, and every
    # other S3 request made for a caller (a metadata HEAD, an upload's absence check) for as
    # long as S3 takes: these keep one address or one token subject from taking all of
    # s3.max_connections (429 past).
    max_streams_per_client: int = Field(16, ge=1)
    max_streams_per_subject: int = Field(16, ge=1)
    # A client that accepts no bytes for this long is dropped, releasing its S3 connection.
    client_write_timeout: float = Field(60.0, gt=0)
    max_header_bytes: int = Field(8190, ge=1024, le=65536)  # each header line; 431 past it
    max_headers: int = Field(64, ge=8, le=1024)
    # The whole request target (path and query); 414 past it. Independent of max_header_bytes:
    # a long token in the query is bounded here, one in a header there.
    max_target_length: int = Field(8192, ge=256, le=65536)
    # Seconds to receive a whole request head, from connection open or (on a kept-alive
    # connection) from the head's first byte: 408 if part of it came, a silent close if not.
    header_timeout: float = Field(10.0, gt=0, le=3600)
    # Seconds to receive a request body (POST /_sign) once its head has arrived; 408 past it.
    body_timeout: float = Field(10.0, gt=0, le=3600)
    # Seconds a kept-alive connection may sit idle between requests before it is closed.
    keepalive_timeout: float = Field(15.0, gt=0, le=3600)
    # Open connections per client address; past it new ones are closed at once. 0: no cap
    # (behind a load balancer every connection comes from its address).
    max_connections_per_client: int = Field(64, ge=0)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)  # for all routes
    max_tracked_clients: int = Field(100_000, ge=100)  # rate-limit buckets kept in memory


class RouteCacheSettings(_Model):
    """Serve small objects from process memory for `max_age` seconds after fetching them."""

    max_age: float = Field(gt=0, le=86400)
    max_object_bytes: int = Field(256 * 1024, ge=1, le=64 * 1024 * 1024)


class ObjectCacheSettings(_Model):
    # All cached entries together, each counted as its body, bucket and key plus a fixed
    # overhead for its metadata and bookkeeping (so empty objects are not free).
    max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    max_entries: int = Field(10_000, ge=0, le=10_000_000)


class CorsSettings(_Model):
    origins: list[str] = Field(min_length=1)
    credentials: bool = False
    max_age: int = Field(600, ge=0, le=86400)

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(
                    f"{origin!r} is not an origin; use scheme://host[:port] with no path, "
                    "e.g. https://app.example.com, or '*'"
                )
        return value

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSettings:
        if self.credentials and "*" in self.origins:
            raise ValueError(
                "credentials: true cannot be combined with origins '*' (browsers refuse it); "
                "list the origins"
            )
        return self


MIB = 1024 * 1024
# S3's smallest part (all but the last part of a multipart upload) and its most parts.
S3_MIN_PART = 5 * MIB
S3_MAX_PARTS = 10_000
# S3's largest part, and its largest object (a multipart upload's most).
S3_MAX_PART = 5 * 1024 * MIB
S3_MAX_OBJECT = 5 * 1024 * 1024 * MIB


class UploadSettings(_Model):
    """What a route accepts when it takes PUT (through the proxy or to a presigned URL) or
    POST (presigned form uploads signed by the sign API). See docs/uploads.md."""

    # Required: no upload route without a size cap. At most S3's largest object, 5 TiB.
    max_bytes: int = Field(ge=0, le=S3_MAX_OBJECT)
    # Media types an upload may declare (`type/*` covers a type); None: the route's
    # inline_types, so a browser is never shown an uploaded type it was not allowed to show.
    content_types: list[str] | None = Field(None, min_length=1)
    overwrite: bool = False  # false: an existing key answers 412 and is kept
    # Streamed uploads: bodies of at most this many bytes (Content-Length known) go up in one
    # PutObject; larger or chunked ones in parts of this size (held in memory one at a time).
    # Presigned multipart uploads also start from it: their parts are this size or, for a
    # file too large for 10,000 of them, the next whole MiB that fits.
    part_size: int = Field(8 * MIB, ge=S3_MIN_PART, le=S3_MAX_PART)
    # The sign API may begin presigned multipart uploads here (`multipart`, `resume`,
    # `complete`, `abort` entries): files up to max_bytes straight to S3, resumable.
    multipart: bool = False

    @field_validator("content_types")
    @classmethod
    def _media_types(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [check_pattern(pattern) for pattern in value]


class RouteSettings(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(min_length=1)
    match: str
    bucket: str = Field(min_length=3, max_length=63)
    key: str = Field(min_length=1)
    delivery: Delivery
    access: Any
    methods: list[Method] = Field(default_factory=_all_methods)
    ttl: Annotated[int, Field(ge=1, le=SIGV4_MAX_EXPIRES)] = 300
    stable: Annotated[int, Field(ge=1, le=SIGV4_MAX_EXPIRES)] | None = None
    stream_below: Annotated[int, Field(ge=0)] = 1024 * 1024
    cache_control: str | None = None
    disposition: Literal["inline", "attachment"] | None = None
    content_type: str | None = None
    cors: CorsSettings | None = None
    rate_limit: RateLimitSettings | None = None  # overrides limits.rate_limit for this route
    cache: RouteCacheSettings | None = None  # stream/auto: hot small objects from memory
    # Object types a browser may show; any other type is sent (or signed) as an attachment.
    inline_types: list[str] = Field(default_factory=lambda: list(DEFAULT_INLINE_TYPES))
    # Names (or `iss` values) of the auth.issuers whose tokens this route accepts.
    issuers: list[str] | None = Field(None, min_length=1)
    # The SSE-C key the route's objects are encrypted with (32 bytes or their base64).
    sse_customer_key: SecretStr | None = None
    upload: UploadSettings | None = None  # required when methods lists PUT or POST
    # delivery: cloudfront: sign cookies for this scope (a key template whose own text may
    # hold CloudFront's wildcards, e.g. albums/{album}/*) instead of signing each URL.
    cookie_scope: str | None = None

    @field_validator("inline_types")
    @classmethod
    def _media_types(cls, value: list[str]) -> list[str]:
        return [check_pattern(pattern) for pattern in value]

    @field_validator("cache_control", "content_type")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        if value is not None and re.search(r"[\r\n\x00]", value):
            raise ValueError("must be a single line (no CR, LF or NUL)")
        return value


class MetadataCacheSettings(_Model):
    """Object metadata kept in-process so `delivery: auto` rarely costs an extra HEAD."""

    max_entries: int = Field(10000, ge=0, le=10_000_000)
    ttl: float = Field(30.0, ge=0)
    # How long a HEAD's 404 is remembered, so repeated lookups of a missing key (a page of
    # links, a retrying client) do not each go to S3; kept short because a key uploaded in
    # the meantime answers 404 on `auto` routes until it expires.
    negative_ttl: float = Field(5.0, ge=0, le=60)


class SignApiSettings(_Model):
    """POST {path} with {"paths": [...]} signs a whole page of links in one request."""

    enabled: bool = True
    path: str = "/_sign"
    max_paths: int = Field(1000, ge=1, le=100_000)  # paths and uploads together
    # Upload forms per request: each may cost an S3 HEAD (overwrite: false) and a form of
    # about 1 KB in the answer, so far fewer than links.
    max_uploads: int = Field(100, ge=0, le=10_000)
    cors: CorsSettings | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "{" in value:
            raise ValueError("must be a fixed path starting with '/', e.g. /_sign")
        return value


class MetricsSettings(_Model):
    """Prometheus metrics, served either on an address of their own (`listen: HOST:PORT`, no
    auth: bind it where only the scraper reaches) or on the proxy's port (`listen: main`),
    where `access` decides who may read them."""

    enabled: bool = False
    listen: str = "127.0.0.1:9464"  # HOST:PORT of their own, or `main` for the proxy's port
    path: str = "/metrics"
    access: Any = None  # an access rule; required with listen: main, refused otherwise

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _fixed_path(value, "/metrics")

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str) -> str:
        if value != MAIN_PORT:
            parse_address(value)
        return value

    @property
    def on_main_port(self) -> bool:
        return self.listen == MAIN_PORT

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) of the metrics' own listener; None when they are on the main port."""
        return None if self.on_main_port else parse_address(self.listen)


MAIN_PORT = "main"


def parse_address(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError naming the fix."""
    host, colon, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"{value!r} is not HOST:PORT; use e.g. 127.0.0.1:9464 (a port of their own) or "
            "main (the proxy's own port, behind metrics.access)"
        )
    return host, int(port)


class HealthSettings(_Model):
    """Liveness and readiness probes, answered before any route and never logged per probe."""

    live_path: str | None = "/healthz"  # null: no liveness probe
    ready_path: str | None = "/readyz"  # null: no readiness probe
    cache: float = Field(5.0, ge=0, le=300)  # seconds one readiness check's answer is reused
    timeout: float = Field(2.0, gt=0, le=60)  # seconds each readiness check may take

    @field_validator("live_path", "ready_path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return None if value is None else _fixed_path(value, "/healthz")


def _fixed_path(value: str, example: str) -> str:
    if not value.startswith("/") or "{" in value or "?" in value:
        raise ValueError(f"must be a fixed path starting with '/', e.g. {example}")
    return value


class WhenStateDown(_Model):
    """What a check that needs the shared state does when it cannot reach it in time."""

    # Rate limits and stream caps protect capacity: a short Redis outage should not take the
    # proxy down with it, so they let requests through (logged and counted) by default.
    limits: Literal["open", "closed"] = "open"
    # A revocation is a security decision: by default a token is refused (503) rather than
    # let through when the list of revocations may be out of date.
    revocations: Literal["open", "closed"] = "closed"


class StateTls(_Model):
    """TLS to Redis (and to Sentinel), for `rediss://` and `rediss+sentinel://` URLs."""

    ca_file: Path | None = None  # PEM certificates to trust; unset: the system's store
    cert_file: Path | None = None  # a client certificate, for a Redis that asks for one
    key_file: Path | None = None  # its private key (PEM, unencrypted)
    check_hostname: bool = True  # the certificate must name the host in the URL


class StateSettings(_Model):
    """Where revocations, rate limits and stream caps live: this process (`memory`), or a
    Redis shared by every worker and replica (`redis`)."""

    backend: Literal["memory", "redis"] = "memory"
    # redis://[:password@]host:port/db, rediss:// for TLS, unix:///path, or a master found
    # through Sentinel (redis+sentinel://host:26379,host2:26379/mymaster/0); secret (it may
    # hold a password), so never shown in errors or logs.
    url: SecretStr | None = None
    key_prefix: str = Field("s3proxy:", min_length=1, max_length=64)
    # Longest any request waits for Redis (connect, pool wait and command together).
    timeout: float = Field(0.25, gt=0, le=10)
    max_connections: int = Field(64, ge=1, le=10000)
    when_down: WhenStateDown = Field(default_factory=WhenStateDown)
    # Seconds a process keeps serving on its copy of the revocations while Redis is
    # unreachable (nobody can revoke meanwhile: that needs Redis); past it, when_down decides.
    outage_grace: float = Field(30.0, ge=0, le=3600)
    # The sentinels' own password (`requirepass` in sentinel.conf), when they have one; the
    # URL's password is the master's.
    sentinel_password: SecretStr | None = None
    tls: StateTls = Field(default_factory=StateTls)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # `url: ${REDIS_URL:-}` with the variable unset
        check_redis_url(value.get_secret_value())
        return value

    @field_validator("sentinel_password")
    @classmethod
    def _unset_if_empty(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None


class RevocationSettings(_Model):
    # The longest a token may live (exp - iat): a longer one, or one without iat or exp, is
    # refused, so that a revocation outlives every token it covers and can then be forgotten.
    max_token_lifetime: int = Field(86400, ge=60, le=31_536_000)


class AdminSettings(_Model):
    """The revocation endpoint (POST/GET/DELETE), on when `access` is set."""

    path: str = "/_admin/revocations"
    access: Any = None  # an access rule: who may revoke (e.g. {claims: {role: admin}})

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "{" in value:
            raise ValueError("must be a fixed path starting with '/', e.g. /_admin/revocations")
        return value


class AuditSettings(_Model):
    """The audit trail (who got what): off unless `path` is set. See docs/operations.md."""

    # A file appended to (relative to the config file; with listen.workers > 1 each worker
    # writes its own, `.wN` before the suffix), or "-" for stdout beside the access log.
    path: str | None = None
    # Past this size the file is renamed aside (UTC timestamp suffix) and a new one goes on
    # with the chain; 0: never (logrotate and SIGHUP instead).
    max_bytes: int = Field(100 * MIB, ge=0)

    @field_validator("path")
    @classmethod
    def _a_path(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\x00" in value):
            raise ValueError('must be a file path, or "-" for stdout; null turns the audit off')
        return value


class Settings(_Model):
    listen: ListenSettings = Field(default_factory=ListenSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    metadata_cache: MetadataCacheSettings = Field(default_factory=MetadataCacheSettings)
    sign_api: SignApiSettings = Field(default_factory=SignApiSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    object_cache: ObjectCacheSettings = Field(default_factory=ObjectCacheSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    revocation: RevocationSettings = Field(default_factory=RevocationSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    cloudfront: CloudFrontSettings | None = None  # needed by routes with delivery: cloudfront
    routes: list[RouteSettings] = Field(min_length=1)


@dataclass(frozen=True)
class Route:
    """One route as the request path uses it: its settings plus what was compiled from them."""

    settings: RouteSettings
    pattern: PathPattern
    key: KeyTemplate
    rule: Rule
    inline: InlineTypes
    # The `iss` values whose tokens this route accepts; None: the one configured issuer's.
    issuers: frozenset[str] | None = None
    # Browser navigations without a usable token are sent to sign in (auth.login), because
    # this route accepts the session that sign-in ends with.
    sign_in: bool = False
    sse: CustomerKey | None = None  # sent to S3 on each GET and HEAD of the route's objects
    # The media types an upload may declare (upload.content_types, else inline_types).
    upload_types: InlineTypes | None = None
    # delivery: cloudfront with cookie_scope: the Resource its signed cookies cover.
    cookie_scope: CookieScope | None = None

    @property
    def name(self) -> str:
        return self.settings.name


@dataclass(frozen=True)
class Config:
    settings: Settings
    routes: tuple[Route, ...]
    metrics_access: Rule | None = None
    admin_access: Rule | None = None  # None: no admin endpoint
    # Legal but risky choices, one line each (`key.path: what and fix`), shown at start-up.
    warnings: tuple[str, ...] = ()
    cloudfront: Signer | None = None  # signs for routes with delivery: cloudfront


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file ({exc.strerror})"]) from None
    return parse_config(
        text, source=str(path), env=os.environ if env is None else env, base_dir=path.parent
    )


def parse_config(
    text: str,
    *,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"{source}:{where}: invalid YAML: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a map with at least 'routes'"])

    # Every mistake is reported in one run: the environment's, the shape's, and the
    # cross-checks' of whatever part of the config is sound enough to check.
    reported: list[str] = []
    expanded = _expand_env(raw, os.environ if env is None else env, "", reported)
    settings, dropped = _validate_sound_parts(expanded, reported)
    if settings is None:
        raise ConfigError(reported)
    problems: list[str] = []
    settings, routes = _cross_check(settings, base_dir or Path.cwd(), problems)
    settings = _resolve_pid_file(settings, base_dir or Path.cwd(), problems)
    settings = _resolve_audit_path(settings, base_dir or Path.cwd(), problems)
    metrics_access = _metrics_access(settings, problems)
    admin_access = _admin_access(settings, problems)
    _check_state(settings.state, problems)
    settings = _resolve_state_tls(settings, base_dir or Path.cwd(), problems)
    _check_token_lifetimes(settings, problems)
    _check_listen(settings.listen, problems)
    _check_paths(settings, problems)
    cloudfront = _load_cloudfront(settings, base_dir or Path.cwd(), problems)
    reported += _not_yet_reported(problems, dropped, reported)
    if reported:
        raise ConfigError(reported)
    warnings = [*_warnings(settings), *(cloudfront.warnings if cloudfront else ())]
    return Config(
        settings,
        tuple(routes),
        metrics_access,
        admin_access,
        tuple(warnings),
        cloudfront.signer if cloudfront else None,
    )


def _load_cloudfront(
    settings: Settings, base_dir: Path, problems: list[str]
) -> LoadedCloudFront | None:
    """The key files read and checked, and the Signer built, once the section is sound."""
    if settings.cloudfront is None:
        return None
    check_cookie_domain(settings.cloudfront, problems)
    return load_signer(settings.cloudfront, base_dir, problems)


@dataclass(frozen=True)
class _Dropped:
    """What shape errors removed before the cross-checks ran: whole sections, and routes (by
    their index in the file)."""

    sections: frozenset[str] = frozenset()
    routes: tuple[int, ...] = ()  # the file's indices of the routes that were kept
    any_route: bool = False


def _validate_sound_parts(expanded: Any, reported: list[str]) -> tuple[Settings | None, _Dropped]:
    """The settings, after reporting every shape error; with errors, the settings without the
    sections and routes that had them (defaults instead), so that the cross-checks can still
    look at the rest. None if even that is not a config."""
    try:
        return Settings.model_validate(expanded), _Dropped()
    except ValidationError as exc:
        reported += _describe_validation_error(exc, expanded)
        failed = [error["loc"] for error in exc.errors(include_url=False)]
    if not isinstance(expanded, dict):
        return None, _Dropped()
    bad_routes = {loc[1] for loc in failed if len(loc) > 1 and loc[0] == "routes"}
    sections = {str(loc[0]) for loc in failed if loc and loc[0] != "routes"}
    if any(len(loc) < 2 or not isinstance(loc[1], int) for loc in failed if loc[:1] == ("routes",)):
        sections.add("routes")
    sound = {key: value for key, value in expanded.items() if key not in sections}
    routes = sound.get("routes")
    kept: tuple[int, ...] = ()
    if isinstance(routes, list):
        kept = tuple(index for index in range(len(routes)) if index not in bad_routes)
        sound["routes"] = [routes[index] for index in kept]
    dropped = _Dropped(frozenset(sections), kept, bool(bad_routes))
    try:
        return Settings.model_validate(sound), dropped
    except ValidationError:
        return None, dropped


def _not_yet_reported(problems: list[str], dropped: _Dropped, reported: list[str]) -> list[str]:
    """Cross-check problems worth adding: none about a key already reported (an unset
    variable, a shape error), nor about a section replaced by its defaults or anything judged
    against it (a problem naming that section: a route needing `cloudfront`; with `auth`
    replaced, routes' issuers); route indices as in the file."""
    said = {_key_of(problem) for problem in reported}
    replaced = (
        re.compile(r"\b(" + "|".join(map(re.escape, sorted(dropped.sections))) + r")\b")
        if dropped.sections
        else None
    )
    kept = []
    for problem in problems:
        if dropped.any_route:
            problem = _ROUTE_INDEX.sub(lambda m: f"routes[{dropped.routes[int(m[1])]}]", problem)
        key = _key_of(problem)
        if key in said or (replaced is not None and replaced.search(problem)):
            continue
        if "auth" in dropped.sections and key.endswith(".issuers"):
            continue
        kept.append(problem)
    return kept


_ROUTE_INDEX = re.compile(r"^routes\[(\d+)\]")


def _key_of(problem: str) -> str:
    """`routes[0] (photos).ttl: ...` -> `routes[0].ttl`."""
    return re.sub(r" \([^)]*\)", "", problem.split(": ", 1)[0])


def _warnings(settings: Settings) -> list[str]:
    """Legal but risky: several workers that do not share their state; and, since an
    identity provider signs tokens for many applications, a JWKS issuer without `audience`
    (and `issuer`), whose tokens minted for any of them would open this proxy's routes."""
    auth = settings.auth
    found = []
    for index, route in enumerate(settings.routes):
        if route.delivery == "cloudfront" and route.cookie_scope and route.stable:
            found.append(
                f"routes[{index}] ({route.name}).stable: browsers cache this route's 302 but "
                "keep one set of CloudFront cookies (Path=/), so after a page of another "
                "cookie_scope a cached 302 leads to the edge with that scope's cookies (403); "
                "remove stable unless pages show one scope at a time"
            )
    if settings.listen.workers > 1 and settings.state.backend == "memory":
        found.append(
            "state.backend: memory with listen.workers > 1 keeps rate limits, stream caps and "
            "revocations per worker (a revocation reaches only the worker that took it); set "
            "backend: redis to share them"
        )
    limits, pool = settings.limits, settings.s3.max_connections
    for cap in ("max_streams_per_client", "max_streams_per_subject"):
        if getattr(limits, cap) >= pool:
            found.append(
                f"limits.{cap}: {getattr(limits, cap)} is not below s3.max_connections "
                f"({pool}), so one caller with a slow S3 can hold every pooled connection and "
                f"others get 503; lower it (to {max(1, pool // 4)}, say) or raise max_connections"
            )
    for index, issuer in enumerate(auth.issuer_list()):
        if issuer.jwks_url is None:
            continue
        where = f"auth.issuers[{index}]" if auth.issuers else "auth"
        if issuer.audience is None:
            found.append(
                f"{where}.audience: not set, so a token this provider signed for any other "
                "application is accepted; set it to the audience your tokens carry (this "
                "proxy's client id or API identifier)"
            )
        if issuer.issuer is None:
            found.append(
                f"{where}.issuer: not set, so `iss` is not checked; set it to the provider's "
                "issuer URL"
            )
    return found


def _expand_env(node: Any, env: Mapping[str, str], where: str, problems: list[str]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string value."""
    if isinstance(node, dict):
        return {
            k: _expand_env(v, env, f"{where}.{k}" if where else str(k), problems)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand_env(v, env, f"{where}[{i}]", problems) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def substitute(found: re.Match[str]) -> str:
        # As in the shell: `${VAR:-default}` takes the default when VAR is unset or empty.
        name, default = found.group(1), found.group(2)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        if name in env:
            return ""  # set but empty: the key's own check says what it needs
        value = (
            f"$({RANDOM_KEY_COMMAND})"
            if where.endswith("secret")
            else "/path/to/private_key.pem"
            if where.endswith("private_key")
            else "..."
        )
        problems.append(f"{where}: environment variable {name} is not set; export {name}={value}")
        return ""

    return _ENV_REF.sub(substitute, node)


def _location(loc: tuple[int | str, ...], data: Any) -> str:
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            name = (
                node[part].get("name")
                if isinstance(node, list) and part < len(node) and isinstance(node[part], dict)
                else None
            )
            if name:
                out += f" ({name})"
        else:
            out += f".{part}" if out else str(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return out or "<top level>"


_HINTS = {
    "extra_forbidden": "unknown key; check its spelling against docs/configuration.md",
    "missing": "required key is missing",
}


_URL = ("state", "url")


def _describe_validation_error(exc: ValidationError, data: Any) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        message = _HINTS.get(error["type"], error["msg"].removeprefix("Value error, "))
        if error["type"] not in ("missing", "extra_forbidden") and "input" in error:
            shown = error["input"]
            # A Redis URL may carry a password, like a secret.
            secret = (
                "secret" in loc
                or "sse_customer_key" in loc
                or loc == _URL
                or "sentinel_password" in loc
            )
            if not isinstance(shown, dict | list) and not secret:
                message += f" (got {shown!r})"
        problems.append(f"{_location(loc, data)}: {message}")
    return problems


def _cross_check(
    settings: Settings, base_dir: Path, problems: list[str]
) -> tuple[Settings, list[Route]]:
    settings = _check_auth(settings, base_dir, problems)
    list_claims = frozenset(settings.auth.list_claims)
    routes: list[Route] = []
    names: set[str] = set()
    for index, route in enumerate(settings.routes):
        where = f"routes[{index}] ({route.name})"
        if route.name in names:
            problems.append(f"{where}.name: duplicate route name; names must be unique")
        names.add(route.name)
        try:
            pattern = compile_pattern(route.match)
        except TemplateError as exc:
            problems.append(f"{where}.match: {exc}")
            continue
        try:
            template = compile_template(route.key)
        except TemplateError as exc:
            problems.append(f"{where}.key: {exc}")
            continue
        missing = template.params - set(pattern.params)
        if missing:
            problems.append(
                f"{where}.key: {{{sorted(missing)[0]}}} is not a parameter of match "
                f"{route.match!r}; add it to match or use {{claims.NAME}} for a token claim"
            )
        try:
            rule = compile_rule(route.access, pattern.params, list_claims)
        except ValueError as exc:
            problems.append(f"{where}.access: {exc}")
            continue
        issuers = _route_issuers(settings.auth, route, rule, where, problems)
        if not rule.needs_token and template.claims:
            problems.append(
                f"{where}.access: a public route cannot use claims in its key "
                f"({route.key!r}); use access: authenticated"
            )
        problems += route_field_problems(route.delivery, route.model_fields_set, where)
        cookie_scope = check_route(
            route.delivery,
            route.cookie_scope,
            pattern.multi_segment,
            template,
            settings.cloudfront,
            where,
            problems,
        )
        if route.cache is not None and route.delivery == "redirect":
            problems.append(
                f"{where}.cache: only applies to delivery stream or auto (a redirect sends no "
                "bytes); remove it"
            )
        if route.stable is not None:
            if route.delivery == "stream":
                problems.append(
                    f"{where}.stable: only applies to delivery redirect or auto; remove it"
                )
            elif route.stable + route.ttl > SIGV4_MAX_EXPIRES:
                problems.append(
                    f"{where}.stable: stable + ttl = {route.stable + route.ttl} s exceeds the "
                    f"SigV4 maximum of {SIGV4_MAX_EXPIRES} s (7 days); shorten one of them"
                )
        login = settings.auth.login
        sign_in = (
            login is not None
            and rule.needs_token
            and (issuers is None or login.public_url in issuers)
        )
        sse = _customer_key(route, where, problems)
        _check_upload(route, where, problems)
        inline = InlineTypes(route.inline_types)
        upload_types = (
            None
            if route.upload is None
            else InlineTypes(route.upload.content_types or route.inline_types)
        )
        routes.append(
            Route(
                route,
                pattern,
                template,
                rule,
                inline,
                issuers,
                sign_in=sign_in,
                sse=sse,
                upload_types=upload_types,
                cookie_scope=cookie_scope,
            )
        )
    return settings, routes


def _check_upload(route: RouteSettings, where: str, problems: list[str]) -> None:
    """Upload methods and `upload` settings come together, on a delivery that can take them."""
    writes = sorted(set(route.methods) & set(UPLOAD_METHODS))
    if route.upload is None:
        if writes:
            problems.append(
                f"{where}.upload: required when methods lists {' and '.join(writes)}; add e.g. "
                "upload: {max_bytes: 10485760}"
            )
        return
    if not writes:
        problems.append(
            f"{where}.upload: the route takes no uploads; add PUT (or POST, for the sign API's "
            "presigned form uploads) to methods, or remove upload"
        )
    upload = route.upload
    streamed_put = "PUT" in writes and route.delivery == "stream"
    # Only a streamed PUT cuts the body into part_size parts itself; presigned multipart
    # uploads plan their own parts (up to 5 TiB).
    if streamed_put and upload.max_bytes > upload.part_size * S3_MAX_PARTS:
        needed = -(-upload.max_bytes // S3_MAX_PARTS)
        problems.append(
            f"{where}.upload: max_bytes {upload.max_bytes} needs more than S3's "
            f"{S3_MAX_PARTS} parts of part_size {upload.part_size}; raise part_size to at "
            f"least {needed} (one part is held in memory per streamed upload)"
        )
    if upload.multipart and route.sse_customer_key is not None:
        problems.append(
            f"{where}.upload.multipart: an SSE-C route cannot take presigned multipart "
            "uploads (a presigned part cannot carry the key); remove multipart"
        )
    if "PUT" in writes and route.delivery == "cloudfront":
        problems.append(
            f"{where}.methods: PUT is not taken on a cloudfront route (CloudFront serves "
            "reads); upload through a stream or redirect route of its own"
        )
    if "PUT" in writes and route.delivery == "auto":
        problems.append(
            f"{where}.methods: PUT needs delivery stream (through the proxy) or redirect (to a "
            "presigned URL); auto chooses by the size of an object that does not exist yet"
        )
    if route.sse_customer_key is not None and ("POST" in writes or route.delivery != "stream"):
        problems.append(
            f"{where}.methods: uploads to an SSE-C route must stream through the proxy (PUT "
            "with delivery: stream); a presigned upload cannot carry the key"
        )


def _customer_key(route: RouteSettings, where: str, problems: list[str]) -> CustomerKey | None:
    """The route's SSE-C key, checked; refused where S3 would need it from a browser."""
    if route.sse_customer_key is None:
        return None
    try:
        key = CustomerKey.parse(route.sse_customer_key.get_secret_value())
    except ValueError as exc:
        problems.append(f"{where}.sse_customer_key: {exc}")
        return None
    if route.delivery != "stream":
        problems.append(
            f"{where}.sse_customer_key: needs delivery: stream (got {route.delivery}); S3 "
            "wants an SSE-C key as request headers, which a browser following a presigned URL "
            "cannot send, so the proxy must fetch the object itself"
        )
    return key


def _resolve_pid_file(settings: Settings, base_dir: Path, problems: list[str]) -> Settings:
    """An absolute pid file path, so that `serve` and `reload` agree whatever their cwd."""
    listen = settings.listen
    if listen.pid_file is None:
        return settings
    path = listen.pid_file if listen.pid_file.is_absolute() else base_dir / listen.pid_file
    if not path.parent.is_dir():
        problems.append(
            f"listen.pid_file: directory {path.parent} does not exist; create it or choose a "
            "path in an existing directory, e.g. /tmp/s3-proxy.pid"
        )
    listen = listen.model_copy(update={"pid_file": path.absolute()})
    return settings.model_copy(update={"listen": listen})


def _resolve_audit_path(settings: Settings, base_dir: Path, problems: list[str]) -> Settings:
    """An absolute audit path in a directory that exists, so a typo fails at load, not at
    the first event."""
    audit = settings.audit
    if audit.path is None or audit.path == "-":
        return settings
    path = Path(audit.path)
    path = path if path.is_absolute() else base_dir / path
    if not path.parent.is_dir():
        problems.append(
            f"audit.path: directory {path.parent} does not exist; create it (writable by the "
            'proxy) or choose a path in an existing directory, or "-" for stdout'
        )
    elif path.is_dir():
        problems.append(f"audit.path: {path} is a directory; name a file in it, e.g. audit.jsonl")
    audit = audit.model_copy(update={"path": str(path.absolute())})
    return settings.model_copy(update={"audit": audit})


def _route_issuers(
    auth: AuthSettings, route: RouteSettings, rule: Rule, where: str, problems: list[str]
) -> frozenset[str] | None:
    """The `iss` values a route trusts. With several issuers a token-needing route must name
    them: otherwise one issuer's `sub: alice` would read alice's files."""
    issuers = auth.issuer_list()
    if route.issuers is None:
        if len(issuers) > 1 and rule.needs_token:
            known = ", ".join(i.name or i.issuer or "?" for i in issuers)
            problems.append(
                f"{where}.issuers: required with several auth.issuers; list the issuers whose "
                f"tokens this route accepts (by name or iss; configured: {known})"
            )
        return None
    if not rule.needs_token:
        problems.append(f"{where}.issuers: a public route takes no token; remove it")
        return None
    trusted: set[str] = set()
    for ref in route.issuers:
        found = next((i for i in issuers if ref in (i.name, i.issuer)), None)
        if found is None:
            known = ", ".join(i.name or i.issuer or "?" for i in issuers)
            problems.append(f"{where}.issuers: no issuer named {ref!r} (configured: {known})")
        elif not found.issuer:
            problems.append(
                f"{where}.issuers: {ref!r} has no `issuer` (iss) to check tokens against; "
                "set auth.issuer"
            )
        else:
            trusted.add(found.issuer)
    return frozenset(trusted)


def _metrics_access(settings: Settings, problems: list[str]) -> Rule | None:
    """Metrics are off unless enabled; on the proxy's own port they need an access rule, on a
    port of their own they take none (that port has no auth at all)."""
    metrics = settings.metrics
    if not metrics.enabled:
        stray = sorted(metrics.model_fields_set - {"enabled"})
        if stray:
            problems.append(
                f"metrics.{stray[0]}: metrics are off; add `enabled: true` under metrics to "
                f"serve them, or remove metrics.{stray[0]}"
            )
        return None
    if not metrics.on_main_port:
        if metrics.access is not None:
            problems.append(
                "metrics.access: only applies with `listen: main`; the metrics port of their "
                "own has no auth (bind it where only the scraper reaches); remove it"
            )
        address = metrics.address
        listen = settings.listen
        if address is not None and address[1] != 0 and address == (listen.host, listen.port):
            problems.append(
                f"metrics.listen: {metrics.listen} is the proxy's own address; choose another "
                "port, or `listen: main` to serve metrics there behind metrics.access"
            )
        return None
    if metrics.access is None:
        problems.append(
            "metrics.access: required with `listen: main` (the proxy's port is open to every "
            "client); e.g. {claims: {role: ops}}, or public if only operators reach this port"
        )
        return None
    try:
        return compile_rule(metrics.access, [], frozenset(settings.auth.list_claims))
    except ValueError as exc:
        problems.append(f"metrics.access: {exc}")
        return None


def _admin_access(settings: Settings, problems: list[str]) -> Rule | None:
    admin = settings.admin
    if admin.access is None:
        if "path" in admin.model_fields_set:
            problems.append(
                "admin.access: required with admin.path (who may revoke tokens); "
                "e.g. {claims: {role: admin}}"
            )
        return None
    try:
        return compile_rule(admin.access, [], frozenset(settings.auth.list_claims))
    except ValueError as exc:
        problems.append(f"admin.access: {exc}")
        return None


def _check_state(state: StateSettings, problems: list[str]) -> None:
    if state.backend == "redis" and state.url is None:
        problems.append(
            "state.url: required with backend redis; e.g. url: ${REDIS_URL} and "
            "export REDIS_URL=redis://127.0.0.1:6379/0"
        )
    if state.backend == "memory" and state.url is not None:
        problems.append("state.url: only used with backend redis; set backend: redis or remove it")
    url = state.url.get_secret_value() if state.url is not None else ""
    if state.sentinel_password is not None and not is_sentinel_url(url):
        problems.append(
            "state.sentinel_password: only used with a redis+sentinel:// or rediss+sentinel:// "
            "state.url; remove it, or put the password of a plain Redis in the URL"
        )
    tls = state.tls
    if not uses_tls(url):
        for name in ("ca_file", "cert_file", "key_file"):
            if getattr(tls, name) is not None:
                problems.append(
                    f"state.tls.{name}: only used with a rediss:// or rediss+sentinel:// "
                    "state.url; use rediss:// for TLS, or remove it"
                )
    if (tls.cert_file is None) != (tls.key_file is None):
        problems.append(
            "state.tls: cert_file and key_file go together (a client certificate and its key)"
        )


def _resolve_state_tls(settings: Settings, base_dir: Path, problems: list[str]) -> Settings:
    """TLS files: relative to the config file, and readable now rather than at first use."""
    tls = settings.state.tls
    found: dict[str, Path] = {}
    for name in ("ca_file", "cert_file", "key_file"):
        given: Path | None = getattr(tls, name)
        if given is None:
            continue
        path = given if given.is_absolute() else base_dir / given
        try:
            with path.open("rb") as file:
                file.read(1)
        except OSError as exc:
            problems.append(f"state.tls.{name}: cannot read {path} ({exc.strerror})")
        found[name] = path.absolute()
    if not found:
        return settings
    state = settings.state.model_copy(update={"tls": tls.model_copy(update=found)})
    return settings.model_copy(update={"state": state})


def _check_token_lifetimes(settings: Settings, problems: list[str]) -> None:
    """A revocation lasts as long as the longest token it may cover, so every token's lifetime
    must be known and bounded by revocation.max_token_lifetime (state/revocations.py rule 4):
    settings that could only admit tokens past that bound are refused here, not at each
    request."""
    longest = settings.revocation.max_token_lifetime
    if not settings.auth.require_exp:
        problems.append(
            "auth.require_exp: false is not supported: a token without exp would outlive "
            "every revocation of it (revocation.max_token_lifetime), so it is refused anyway; "
            "remove the key and have the issuer set exp"
        )
    login = settings.auth.login
    if login is not None and login.max_age > longest:
        problems.append(
            f"auth.login.max_age: {login.max_age} is longer than "
            f"revocation.max_token_lifetime ({longest}), so every session would be refused; "
            f"lower it or raise max_token_lifetime to at least {login.max_age}"
        )


def _check_listen(listen: ListenSettings, problems: list[str]) -> None:
    if listen.proxy_protocol and not listen.trusted_proxies:
        problems.append(
            "listen.proxy_protocol: needs listen.trusted_proxies, the networks the load "
            "balancers connect from (e.g. trusted_proxies: [10.0.0.0/8]); only they may send "
            "a PROXY header"
        )


def _check_paths(settings: Settings, problems: list[str]) -> None:
    """Fixed paths answered before routing must not shadow one another."""
    taken: dict[str, str] = {}
    health, metrics = settings.health, settings.metrics
    fixed = [("health.live_path", health.live_path), ("health.ready_path", health.ready_path)]
    if metrics.enabled and metrics.on_main_port:
        fixed.append(("metrics.path", metrics.path))
    if settings.sign_api.enabled:
        fixed.append(("sign_api.path", settings.sign_api.path))
    if settings.admin.access is not None:
        fixed.append(("admin.path", settings.admin.path))
    login = settings.auth.login
    if login is not None:
        for key in ("redirect_path", "login_path", "logout_path"):
            fixed.append((f"auth.login.{key}", getattr(login, key)))
    for key, path in fixed:
        if path is None:
            continue
        if path in taken:
            problems.append(f"{key}: {path} is also {taken[path]}; give each its own path")
        taken.setdefault(path, key)


_ISSUER_KEYS = (
    "name",
    "issuer",
    "audience",
    "algorithms",
    "secret",
    "public_key_file",
    "public_key",
    "jwks_url",
)


def _check_auth(settings: Settings, base_dir: Path, problems: list[str]) -> Settings:
    auth = settings.auth
    if auth.issuers:
        stray = sorted(k for k in _ISSUER_KEYS if k in auth.model_fields_set)
        if stray:
            problems.append(
                f"auth.{stray[0]}: with auth.issuers, set keys inside each issuer instead"
            )
        for index, issuer in enumerate(auth.issuers):
            if not issuer.issuer:
                problems.append(
                    f"auth.issuers[{index}].issuer: required when several issuers are "
                    "configured (tokens are matched to their issuer by `iss`)"
                )
        names = [i.issuer for i in auth.issuers if i.issuer]
        if len(names) != len(set(names)):
            problems.append("auth.issuers: each issuer may appear only once")
        labels = [i.name for i in auth.issuers if i.name]
        if len(labels) != len(set(labels)):
            problems.append("auth.issuers: each name may appear only once")
        issuers = [
            _check_issuer(issuer, f"auth.issuers[{index}]", base_dir, problems)
            for index, issuer in enumerate(auth.issuers)
        ]
        auth = auth.model_copy(update={"issuers": issuers})
    elif auth.has_shorthand_issuer:
        auth = _check_issuer(auth, "auth", base_dir, problems)
    if auth.login is not None:
        _check_login(auth, auth.login, problems)
    if auth.link_secret is not None:
        link = auth.link_secret.get_secret_value()
        if len(link.encode()) < 32:
            problems.append(
                f"auth.link_secret: at least 32 bytes; generate one with: {RANDOM_KEY_COMMAND}"
            )
        if any(i.secret and i.secret.get_secret_value() == link for i in auth.issuer_list()):
            problems.append("auth.link_secret: must differ from every issuer secret")
    return settings.model_copy(update={"auth": auth})


def _check_login(auth: AuthSettings, login: LoginSettings, problems: list[str]) -> None:
    secret = login.session_secret.get_secret_value()
    if len(secret.encode()) < 32:
        problems.append(
            f"auth.login.session_secret: at least 32 bytes; generate one with: {RANDOM_KEY_COMMAND}"
        )
    others = [i for i in auth.issuer_list() if i.name != login.name or i.issuer != login.public_url]
    if any(i.secret and i.secret.get_secret_value() == secret for i in others) or (
        auth.link_secret is not None and auth.link_secret.get_secret_value() == secret
    ):
        problems.append(
            "auth.login.session_secret: must differ from every issuer secret and link_secret"
        )
    if any(i.name == login.name for i in others):
        problems.append(
            f"auth.login.name: {login.name!r} is also an issuer's name; give sign-in its own"
        )
    if any(i.issuer == login.public_url for i in others):
        problems.append(
            "auth.login.public_url: is also an issuer's `issuer`; session tokens are issued "
            "as the proxy's public_url, so no other issuer may use it"
        )
    cookies = {source.cookie for source in auth.sources if source.cookie}
    if login.cookie.name not in cookies:
        problems.append(
            f"auth.login.cookie.name: {login.cookie.name!r} is not one of auth.sources, so "
            f"the session would never be read; add {{cookie: {login.cookie.name}}} to "
            "auth.sources"
        )


_Issuer = TypeVar("_Issuer", bound=IssuerSettings)


def _check_issuer(issuer: _Issuer, where: str, base_dir: Path, problems: list[str]) -> _Issuer:
    algorithms = set(issuer.algorithms)
    hmac = sorted(algorithms & HMAC_ALGORITHMS)
    if hmac:
        secret = issuer.secret.get_secret_value() if issuer.secret else ""
        if not secret:
            problems.append(
                f"{where}.secret: required for {', '.join(hmac)}; set it to ${{JWT_SECRET}} "
                f"and export JWT_SECRET=$({RANDOM_KEY_COMMAND})"
            )
        else:
            needed = max(_MIN_HMAC_BYTES[alg] for alg in hmac)
            if len(secret.encode()) < needed:
                problems.append(
                    f"{where}.secret: too short for {hmac[-1]} ({len(secret.encode())} bytes, "
                    f"need {needed}); generate one with: {RANDOM_KEY_COMMAND}"
                )
    asymmetric = sorted(algorithms & ASYMMETRIC_ALGORITHMS)
    public_key = issuer.public_key
    if issuer.public_key_file is not None:
        key_path = issuer.public_key_file
        if not key_path.is_absolute():
            key_path = base_dir / key_path
        try:
            public_key = key_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not a text PEM file"
            problems.append(f"{where}.public_key_file: cannot read {key_path} ({reason})")
            public_key = None
    if asymmetric and not public_key and issuer.jwks_url is None:
        if issuer.public_key_file is None:
            problems.append(
                f"{where}.jwks_url: {', '.join(asymmetric)} needs keys: set jwks_url to the "
                "provider's JWKS, or public_key_file to a PEM public key"
            )
    elif asymmetric and public_key:
        for alg in asymmetric:
            try:
                jwt.get_algorithm_by_name(alg).prepare_key(public_key)
            except Exception:
                problems.append(f"{where}.public_key_file: not a valid PEM public key for {alg}")
                break
    if (issuer.jwks_url or public_key) and not asymmetric:
        problems.append(
            f"{where}.algorithms: public keys are configured but no asymmetric algorithm "
            "(RS256, ES256, ...) is allowed"
        )
    if public_key != issuer.public_key:
        issuer = issuer.model_copy(update={"public_key": public_key})
    return issuer
