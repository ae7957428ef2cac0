"""SigV4 signing (presigned URLs and signed request headers) with an explicit signing time,
and presigned URL lifetimes. No I/O.

Why not botocore's generate_presigned_url: it always signs "now", so every call yields a new
URL and a browser can never cache a redirected image. Signing with a chosen time (the start of
a `stable` window) makes the URL a pure function of (credentials, bucket, key, overrides,
window), identical across processes and replicas with no shared state. Only the `host` header
is signed, so clients need to send nothing special.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import quote, urlsplit

SIGV4_MAX_EXPIRES = 604800
# The query parameter a presigned URL carries its request's id in (signed like the rest). S3
# ignores parameters whose names start with `x-` but writes them to its server access log, so
# that log's line joins the audit trail's `url.signed` event (docs/operations.md).
REQUEST_ID_PARAM = "x-request-id"
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None
    expires_at: float | None = None  # epoch seconds, for temporary credentials

    def __repr__(self) -> str:  # never print a secret by accident
        return f"Credentials(access_key={self.access_key[:4]}..., temporary={bool(self.token)})"


class Lifetime(NamedTuple):
    """(A tuple, not a frozen dataclass: one is planned per signed link, and a frozen
    dataclass costs three object.__setattr__ calls to build.)"""

    signed_at: int  # X-Amz-Date, epoch seconds
    expires_in: int  # X-Amz-Expires
    max_age: int  # how long a client may cache the redirect; 0 = not at all

    @property
    def expires_at(self) -> int:
        return self.signed_at + self.expires_in


class LifetimeError(Exception):
    """No URL can be issued that would still be valid: `limit` names what ran out."""

    def __init__(self, limit: str) -> None:
        self.limit = limit
        super().__init__(limit)


def plan_lifetime(
    now: float,
    ttl: int,
    stable: int | None = None,
    token_expires_at: float | None = None,
    credentials_expire_at: float | None = None,
) -> Lifetime:
    """Choose signing time and expiry.

    Without `stable` the URL is signed now and lives `ttl` seconds. With `stable` it is signed
    at the start of the current window and lives `stable + ttl`, so it is valid for at least
    `ttl` from any moment in the window. Either way it never outlives the caller's token or
    temporary credentials.
    """
    if stable:
        signed_at = int(now // stable * stable)
        natural_end = signed_at + stable + ttl
    else:
        signed_at = int(now)
        natural_end = signed_at + ttl
    # (Planned on every redirect: plain comparisons, no tuple walked and no min()/max()
    # calls, each the same choice as the min()/max() it stands for.)
    end = natural_end
    limit = None
    if token_expires_at is not None and token_expires_at < end:
        end, limit = int(token_expires_at), "token"
    if credentials_expire_at is not None and credentials_expire_at < end:
        end, limit = int(credentials_expire_at), "credentials"
    if end <= now:
        raise LifetimeError(limit or "ttl")
    expires_in = end - signed_at
    if expires_in > SIGV4_MAX_EXPIRES:
        expires_in = SIGV4_MAX_EXPIRES
    if not stable:
        return Lifetime(signed_at, expires_in, 0)  # a one-off URL: not to be cached
    remaining = signed_at + expires_in - now
    # The cached redirect must leave the client time to actually use the URL: a tenth of
    # what remains, at least 5 s and at most 60 s.
    margin = remaining / 10
    if margin <= 5.0:
        margin = 5.0
    elif margin >= 60.0:
        margin = 60.0
    max_age = int(remaining - margin)
    return Lifetime(signed_at, expires_in, max_age if max_age > 0 else 0)


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str  # host[:port] as the client will send it in the Host header
    addressing_style: str  # auto | path | virtual
    base_path: str = ""

    @classmethod
    def parse(cls, url: str, addressing_style: str) -> Endpoint:
        parts = urlsplit(url)
        # Sign the Host header exactly as clients will send it: lower case, no default port.
        host = (parts.hostname or "").lower()
        if ":" in host:
            host = f"[{host}]"
        default_port = {"http": 80, "https": 443}.get(parts.scheme)
        if parts.port is not None and parts.port != default_port:
            host = f"{host}:{parts.port}"
        return cls(parts.scheme, host, addressing_style, parts.path.rstrip("/"))

    def locate(self, bucket: str, key: str) -> tuple[str, str]:
        """Return (host, canonical path) for an object under this endpoint."""
        encoded_key = quote(key, safe="/~")
        if self._virtual(bucket):
            return f"{bucket}.{self.host}", f"{self.base_path}/{encoded_key}"
        return self.host, f"{self.base_path}/{bucket}/{encoded_key}"

    def _virtual(self, bucket: str) -> bool:
        if self.addressing_style == "path":
            return False
        if self.addressing_style == "virtual":
            return True
        hostname = self.host.rsplit(":", 1)[0].strip("[]")
        if hostname == "localhost" or _is_ip(hostname):
            return False
        # Dots in a bucket name break TLS wildcard certificates under virtual hosting.
        return bool(_DNS_BUCKET.match(bucket)) and not (self.scheme == "https" and "." in bucket)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def aws_endpoint(region: str) -> str:
    return f"https://s3.{region}.amazonaws.com"


def presign_url(
    *,
    endpoint: Endpoint,
    region: str,
    credentials: Credentials,
    method: str,
    bucket: str,
    key: str,
    signed_at: int,
    expires_in: int,
    params: Mapping[str, str] | None = None,
    signed_headers: Mapping[str, str] | None = None,
) -> str:
    """A query-signed URL. `signed_headers` (lower-case names, e.g. content-type for an
    upload) are signed besides host: the request made with the URL must carry exactly them."""
    host, path = endpoint.locate(bucket, key)
    timestamp, scope = _scope(signed_at, region)
    headers = dict(sorted({"host": host, **(signed_headers or {})}.items()))
    names = ";".join(headers)
    query = dict(params or {})
    query.update(
        {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{credentials.access_key}/{scope}",
            "X-Amz-Date": timestamp,
            "X-Amz-Expires": str(expires_in),
            "X-Amz-SignedHeaders": names,
        }
    )
    if credentials.token:
        query["X-Amz-Security-Token"] = credentials.token
    canonical_query = "&".join(
        f"{_uri_encode(name)}={_uri_encode(value)}" for name, value in sorted(query.items())
    )
    canonical_headers = "".join(f"{name}:{value.strip()}\n" for name, value in headers.items())
    canonical_request = (
        f"{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{names}\nUNSIGNED-PAYLOAD"
    )
    signature = _signature(credentials.secret_key, region, timestamp, scope, canonical_request)
    return f"{endpoint.scheme}://{host}{path}?{canonical_query}&X-Amz-Signature={signature}"


def sign_request(
    *,
    endpoint: Endpoint,
    region: str,
    credentials: Credentials,
    method: str,
    bucket: str,
    key: str,
    now: float,
    query: Mapping[str, str] | None = None,
    signed_headers: Mapping[str, str] | None = None,
) -> tuple[str, str, dict[str, str]]:
    """Return (host, target, headers) for a SigV4 header-signed request without a body; the
    target is the path, plus `query` (signed) when given.

    Only host and the x-amz-* headers are signed: those this makes, and `signed_headers`
    (lower-case x-amz-* names, e.g. SSE-C's), which are returned with them. Range and
    conditional headers may be added unsigned, as S3 allows.
    """
    host, path = endpoint.locate(bucket, key)
    canonical_query = "&".join(
        f"{_uri_encode(name)}={_uri_encode(value)}" for name, value in sorted((query or {}).items())
    )
    timestamp, scope = _scope(int(now), region)
    headers = {
        "host": host,
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        "x-amz-date": timestamp,
    }
    if credentials.token:
        headers["x-amz-security-token"] = credentials.token
    if signed_headers:
        headers.update(signed_headers)
        headers = dict(sorted(headers.items()))
    names = ";".join(headers)  # lower case and sorted
    canonical_headers = "".join(f"{name}:{value}\n" for name, value in headers.items())
    canonical_request = (
        f"{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{names}\nUNSIGNED-PAYLOAD"
    )
    signature = _signature(credentials.secret_key, region, timestamp, scope, canonical_request)
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={names}, Signature={signature}"
    )
    del headers["host"]  # the HTTP client sends Host itself, exactly as signed
    return host, f"{path}?{canonical_query}" if canonical_query else path, headers


@dataclass(frozen=True)
class PostForm:
    """A presigned POST: the browser sends a multipart/form-data POST to `url` with `fields`
    first and the file last (as the field named `file`)."""

    url: str
    fields: dict[str, str]


def presign_post(
    *,
    endpoint: Endpoint,
    region: str,
    credentials: Credentials,
    bucket: str,
    key: str,
    content_type: str,
    max_bytes: int,
    signed_at: int,
    expires_at: int,
) -> PostForm:
    """A SigV4-signed POST policy (S3's browser-based uploads) that admits exactly one key,
    one Content-Type and a body of 0..max_bytes, until `expires_at` (epoch seconds).

    The signature covers the base64 policy document itself (not a canonical request), so what
    the form may carry is fixed by the policy's conditions; S3 refuses a field the policy does
    not name and any field that breaks a condition.
    """
    timestamp, scope = _scope(signed_at, region)
    fields = {
        "key": key,
        "Content-Type": content_type,
        "x-amz-algorithm": "AWS4-HMAC-SHA256",
        "x-amz-credential": f"{credentials.access_key}/{scope}",
        "x-amz-date": timestamp,
    }
    if credentials.token:
        fields["x-amz-security-token"] = credentials.token
    conditions: list[object] = [{"bucket": bucket}]
    conditions += [{name: value} for name, value in fields.items()]
    conditions.append(["content-length-range", 0, max_bytes])
    expiration = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = json.dumps({"expiration": expiration, "conditions": conditions})
    policy = base64.b64encode(document.encode()).decode()
    key_bytes = _signing_key(credentials.secret_key, timestamp[:8], region)
    fields["policy"] = policy
    fields["x-amz-signature"] = hmac.new(key_bytes, policy.encode(), hashlib.sha256).hexdigest()
    host, path = endpoint.locate(bucket, "")
    return PostForm(f"{endpoint.scheme}://{host}{path}", fields)


@lru_cache(maxsize=8)  # the same second is signed many times over
def _scope(signed_at: int, region: str) -> tuple[str, str]:
    timestamp = datetime.fromtimestamp(signed_at, UTC).strftime("%Y%m%dT%H%M%SZ")
    return timestamp, f"{timestamp[:8]}/{region}/s3/aws4_request"


def _signature(
    secret_key: str, region: str, timestamp: str, scope: str, canonical_request: str
) -> str:
    string_to_sign = (
        f"AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n"
        + hashlib.sha256(canonical_request.encode()).hexdigest()
    )
    key = _signing_key(secret_key, timestamp[:8], region)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _uri_encode(value: str) -> str:
    return quote(value, safe="-_.~")


@lru_cache(maxsize=64)
def _signing_key(secret_key: str, date: str, region: str) -> bytes:
    key = hmac.new(f"AWS4{secret_key}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
