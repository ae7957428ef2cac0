"""Signed URLs (canned policy) and signed cookies (custom policy) for one CloudFront
distribution, signed with its active key. No I/O.

A canned-policy URL is byte for byte what `botocore.signers.CloudFrontSigner` makes for the
same URL and expiry (tests/test_cloudfront_signing.py proves it). Cookies carry a custom
policy, since only a custom policy's Resource may hold a wildcard. Both are pure functions of
(URL or scope, expiry, key), so a URL signed for a `stable` window is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from .keys import HashName, SigningKey, VerifyingKey
from .policy import canned_policy, custom_policy, encode

# The query parameters and cookies CloudFront reads; nothing else of a URL is CloudFront's.
URL_PARAMS = ("Expires", "Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm")
COOKIE_PREFIX = "CloudFront-"


def object_path(key: str) -> str:
    """An S3 key as a URL path, encoded as the proxy encodes keys for S3 (`/` and `~` kept)."""
    return "/" + quote(key, safe="/~")


# Lax: sent and accepted on every same-site hop (a page on app.example.com, its <img> through
# files.example.com to cdn.example.com) and on a top-level link from elsewhere, but never on
# another site's <img>, fetch() or frame (docs/delivery.md says more).
COOKIE_SAMESITE = "Lax"


@dataclass(frozen=True)
class SignedCookies:
    """The cookies that let a browser fetch every URL `resource` covers until `expires_at`."""

    resource: str
    expires_at: int
    values: tuple[tuple[str, str], ...]  # (cookie name, value), in the order they are set

    def set_cookie_headers(self, domain: str | None) -> list[str]:
        """One Set-Cookie value per cookie. No Expires or Max-Age, as AWS advises: they end
        with the browser session, and the policy's DateLessThan ends them sooner."""
        scope = f"; Domain={domain}" if domain else ""
        return [
            f"{name}={value}{scope}; Path=/; Secure; HttpOnly; SameSite={COOKIE_SAMESITE}"
            for name, value in self.values
        ]


class Signer:
    """Signs for one distribution (`origin`, e.g. https://cdn.example.com) with the active
    key; `listed` are the key group's other keys, kept for diagnosis, never used to sign."""

    def __init__(
        self,
        origin: str,
        active: SigningKey,
        listed: tuple[VerifyingKey, ...] = (),
        hash_name: HashName = "SHA1",
    ) -> None:
        self.origin = origin.rstrip("/")
        self.active = active
        self.listed = listed
        self.hash_name = hash_name

    def __repr__(self) -> str:
        return f"Signer({self.origin}, active={self.active!r}, listed={len(self.listed)})"

    @property
    def trusted(self) -> Mapping[str, VerifyingKey]:
        """Every configured key by ID: what the distribution's trusted key group holds."""
        keys = {key.key_id: key for key in self.listed}
        keys[self.active.key_id] = self.active.verifying()
        return keys

    def object_url(self, key: str) -> str:
        """The unsigned CloudFront URL of an S3 key."""
        return self.origin + object_path(key)

    def signed_url(self, url: str, expires: int) -> str:
        """`url` with a canned policy: Expires, Signature, Key-Pair-Id (and Hash-Algorithm
        when signing with SHA-256)."""
        signature = self.active.sign(canned_policy(url, expires), self.hash_name)
        params = [
            f"Expires={int(expires)}",
            f"Signature={encode(signature)}",
            f"Key-Pair-Id={self.active.key_id}",
        ]
        if self.hash_name != "SHA1":
            params.append(f"Hash-Algorithm={self.hash_name}")
        return url + ("&" if "?" in url else "?") + "&".join(params)

    def signed_cookies(self, resource: str, expires: int) -> SignedCookies:
        """Cookies with a custom policy for `resource` (wildcards allowed) until `expires`."""
        policy = custom_policy(resource, expires)
        signature = self.active.sign(policy, self.hash_name)
        values = [
            (COOKIE_PREFIX + "Policy", encode(policy)),
            (COOKIE_PREFIX + "Signature", encode(signature)),
            (COOKIE_PREFIX + "Key-Pair-Id", self.active.key_id),
        ]
        if self.hash_name != "SHA1":
            values.append((COOKIE_PREFIX + "Hash-Algorithm", self.hash_name))
        return SignedCookies(resource, int(expires), tuple(values))
