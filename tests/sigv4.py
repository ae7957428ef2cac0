"""Independent SigV4 checks: presigned URLs and header-signed requests (moto verifies neither)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlsplit


def _sign(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def verify_presigned_url(
    url: str,
    *,
    secret_key: str,
    method: str = "GET",
    now: datetime | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, str]:
    """Recompute the URL's signature; return its query params, raise AssertionError if wrong.
    `headers`: the request's headers other than host (lower-case names); each one the URL
    signs must be among them, and is signed with its value there."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    signed = params["X-Amz-SignedHeaders"].split(";")
    if headers is None:
        assert signed == ["host"], "only the host header may be signed"
    sent = {"host": parts.netloc, **(headers or {})}
    assert signed == sorted(signed) and "host" in signed
    signature = params.pop("X-Amz-Signature")
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )
    canonical_request = "\n".join(
        [
            method,
            parts.path,
            canonical_query,
            "".join(f"{name}:{sent[name]}\n" for name in signed).rstrip("\n"),
            "",
            ";".join(signed),
            "UNSIGNED-PAYLOAD",
        ]
    )
    _access_key, date, region, service, terminator = params["X-Amz-Credential"].split("/")
    assert terminator == "aws4_request"
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = _sign(key, part)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, signature), "signature does not verify"
    if now is not None:
        signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        age = (now - signed_at).total_seconds()
        assert -60 <= age < int(params["X-Amz-Expires"]), "URL is not valid at `now`"
    params["X-Amz-Signature"] = signature
    return params


def verify_signed_request(
    method: str, raw_path: str, headers: dict[str, str], *, secret_key: str
) -> list[str]:
    """Recompute a header-signed request's signature (`headers` with lower-case names, as
    received); return the names it signs, raise AssertionError if wrong."""
    algorithm, _, fields = headers["authorization"].partition(" ")
    assert algorithm == "AWS4-HMAC-SHA256"
    parts = dict(part.strip().split("=", 1) for part in fields.split(","))
    signed = parts["SignedHeaders"].split(";")
    path, _, query = raw_path.partition("?")
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)
    canonical_headers = "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed)
    canonical_request = "\n".join(
        [
            method,
            path,
            canonical_query,
            canonical_headers,
            ";".join(signed),
            headers["x-amz-content-sha256"],
        ]
    )
    _access_key, date, region, service, terminator = parts["Credential"].split("/")
    scope = f"{date}/{region}/{service}/{terminator}"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            headers["x-amz-date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = _sign(key, part)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, parts["Signature"]), "signature does not verify"
    return signed
