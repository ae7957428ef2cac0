"""The `cloudfront:` config section: its model, and the checks that read the key files and
build the Signer at load. Every mistake names its key path and the fix; key material is never
quoted (only a key's path, kind and size).

config.py owns loading; this module is imported by it and imports nothing of it.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..routing import KeyTemplate, TemplateError, compile_template
from .keys import (
    KeyProblem,
    SigningKey,
    VerifyingKey,
    load_private_key,
    load_public_key,
)
from .scope import CookieScope, compile_scope
from .signer import Signer

# CloudFront's public key IDs (K2JCJMDEHXQW5F) and legacy key pair IDs (APKA...).
_KEY_ID = r"^[A-Z0-9]{8,64}$"
_HOST = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_BASE64 = re.compile(r"[A-Za-z0-9+/=]+")
KEY_COMMAND = "openssl genrsa -out private_key.pem 2048"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CloudFrontKeySettings(_Model):
    """One key of the trusted key group. The active one signs; the others are listed so that
    `cloudfront explain` and `check` know them while a rotation is under way."""

    id: str = Field(pattern=_KEY_ID)
    private_key: Path | None = None  # PEM file; required for the active key
    public_key: Path | None = None  # PEM file; enough for a key that no longer signs
    active: bool = False

    @field_validator("private_key", "public_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _one_file(self) -> CloudFrontKeySettings:
        if (self.private_key is None) == (self.public_key is None):
            raise ValueError("give private_key (a key that signs) or public_key (one listed)")
        if self.active and self.private_key is None:
            raise ValueError("the active key signs, so it needs private_key")
        return self


class CloudFrontSettings(_Model):
    """The distribution in front of the routes' buckets, and the key that signs for it."""

    # The distribution's domain (or alternate domain name): `cdn.example.com` means
    # https://cdn.example.com; http:// is allowed on loopback only (the demo's stand-in).
    domain: str
    key_pair_id: str | None = Field(None, pattern=_KEY_ID)
    private_key: Path | None = None
    keys: list[CloudFrontKeySettings] | None = Field(None, min_length=1)
    cookie_domain: str | None = None  # Domain= of signed cookies; none: the proxy's host only
    # SHA1 is what every CloudFront client knows; SHA256 adds Hash-Algorithm=SHA256.
    hash_algorithm: Literal["SHA1", "SHA256"] = "SHA1"

    @field_validator("private_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("domain")
    @classmethod
    def _origin(cls, value: str) -> str:
        return distribution_origin(value)

    @field_validator("cookie_domain")
    @classmethod
    def _cookie_domain(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        host = value.strip().lower().removeprefix(".")
        if not _HOST.fullmatch(host) or ("." not in host and host != "localhost"):
            raise ValueError("must be a domain name such as example.com (no scheme, port or path)")
        return host

    @property
    def host(self) -> str:
        return urlsplit(self.domain).hostname or ""


def distribution_origin(value: str) -> str:
    """`cdn.example.com` -> `https://cdn.example.com`; an https:// origin as it is; http://
    only on loopback. ValueError naming the fix for anything else."""
    text = value.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    host = (parts.hostname or "").lower()
    fix = (
        "use the distribution's domain name, e.g. d111111abcdef8.cloudfront.net or cdn.example.com"
    )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"must be a domain name with no path, query or user; {fix}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"has an invalid port; {fix}") from None
    if parts.scheme == "http":
        if host not in _LOOPBACK:
            raise ValueError(f"CloudFront is reached over https; {fix}")
    elif parts.scheme != "https":
        raise ValueError(f"must be a domain name or an https:// origin; {fix}")
    if not (_HOST.fullmatch(host) or host in _LOOPBACK):
        raise ValueError(f"{host!r} is not a domain name; {fix}")
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}" + (f":{port}" if port is not None else "")


@dataclass(frozen=True)
class LoadedCloudFront:
    signer: Signer
    warnings: tuple[str, ...]


def load_signer(
    settings: CloudFrontSettings, base_dir: Path, problems: list[str]
) -> LoadedCloudFront | None:
    """Read and check the key files; the Signer, or None after naming each mistake."""
    where = "cloudfront"
    warnings: list[str] = []
    entries: list[tuple[str, CloudFrontKeySettings]] = []
    if settings.keys is not None:
        if settings.key_pair_id is not None or settings.private_key is not None:
            problems.append(
                f"{where}.keys: give either keys (for a rotation) or key_pair_id with "
                "private_key, not both"
            )
            return None
        entries = [(f"{where}.keys[{i}]", key) for i, key in enumerate(settings.keys)]
        ids = [key.id for key in settings.keys]
        if len(set(ids)) != len(ids):
            problems.append(f"{where}.keys: each id may appear only once")
        active = [key.id for key in settings.keys if key.active]
        if len(active) != 1:
            problems.append(
                f"{where}.keys: mark exactly one key `active: true` (the one that signs; found "
                f"{len(active)})"
            )
    elif settings.key_pair_id is None or settings.private_key is None:
        missing = "key_pair_id" if settings.key_pair_id is None else "private_key"
        problems.append(
            f"{where}.{missing}: required; key_pair_id is the ID of the public key in the "
            "distribution's trusted key group, private_key the path of its PEM private key "
            "(e.g. private_key: ${CLOUDFRONT_KEY_FILE})"
        )
        return None
    else:
        entries = [
            (
                where,
                CloudFrontKeySettings(
                    id=settings.key_pair_id, private_key=settings.private_key, active=True
                ),
            )
        ]
    signing: SigningKey | None = None
    listed: list[VerifyingKey] = []
    failed = False
    for path, entry in entries:
        loaded = _load_key(entry, path, base_dir, problems, warnings)
        if loaded is None:
            failed = True
        elif isinstance(loaded, SigningKey) and entry.active:
            signing = loaded
        else:
            listed.append(loaded.verifying() if isinstance(loaded, SigningKey) else loaded)
    if failed or signing is None:
        return None
    signer = Signer(settings.domain, signing, tuple(listed), settings.hash_algorithm)
    return LoadedCloudFront(signer, tuple(warnings))


def _load_key(
    entry: CloudFrontKeySettings,
    where: str,
    base_dir: Path,
    problems: list[str],
    warnings: list[str],
) -> SigningKey | VerifyingKey | None:
    private = entry.private_key is not None
    field = "private_key" if private else "public_key"
    given = entry.private_key or entry.public_key or Path()  # the model requires one
    if not _plausible_path(given):
        # Key material where a path belongs (a PEM pasted into the variable that should name
        # its file): the value is never repeated, not even as "cannot read <path>".
        problems.append(
            f"{where}.{field}: holds what looks like the key itself, not the path of its PEM "
            f"file (the value is not shown); write key {entry.id} to a file only the proxy "
            "can read (chmod 600) and give its path, e.g. ${CLOUDFRONT_KEY_FILE}"
        )
        return None
    path = given if given.is_absolute() else base_dir / given
    try:
        pem = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        problems.append(
            f"{where}.{field}: cannot read {path} ({exc.strerror}); point it at the PEM file "
            f"of key {entry.id}"
        )
        return None
    try:
        if private:
            key = SigningKey(entry.id, load_private_key(pem))
        else:
            return VerifyingKey(entry.id, load_public_key(pem))
    except KeyProblem as exc:
        problems.append(f"{where}.{field}: {path} is {exc}")
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"{where}.private_key: {path} can be read by other users (mode "
            f"{stat.S_IMODE(mode):04o}); chmod 600 it"
        )
    return key


def _plausible_path(given: Path) -> bool:
    """Whether `given` can be a file's path rather than key material: no line break, no PEM
    armour, no name longer than a file system takes, and not a long run of nothing but
    base64 (a key's DER on one line, whose `/`s would otherwise pass for directories)."""
    text = str(given)
    return (
        "\n" not in text
        and "\r" not in text
        and "-----BEGIN" not in text
        and all(len(part.encode()) <= 255 for part in given.parts)
        and not (len(text) >= 64 and _BASE64.fullmatch(text))
    )


def check_route(
    delivery: str,
    cookie_scope: str | None,
    multi_segment: frozenset[str],
    key: KeyTemplate,
    settings: CloudFrontSettings | None,
    where: str,
    problems: list[str],
) -> CookieScope | None:
    """A route's CloudFront fields: the section exists when needed, and its cookie scope
    compiles, uses only the key's own parameters and claims, and covers the key."""
    if delivery != "cloudfront":
        if cookie_scope is not None:
            problems.append(
                f"{where}.cookie_scope: only applies to delivery: cloudfront; remove it"
            )
        return None
    if settings is None:
        problems.append(
            f"{where}.delivery: cloudfront needs the top-level cloudfront section; add "
            "cloudfront: {domain: cdn.example.com, key_pair_id: K2JCJMDEHXQW5F, "
            "private_key: ${CLOUDFRONT_KEY_FILE}}"
        )
    if cookie_scope is None:
        return None
    try:
        scope = compile_scope(compile_template(cookie_scope), key, multi_segment)
    except TemplateError as exc:
        problems.append(f"{where}.cookie_scope: {exc}")
        return None
    if settings is not None and settings.host.endswith(".cloudfront.net"):
        problems.append(
            f"{where}.cookie_scope: cookies set by this proxy never reach {settings.host} "
            "(cloudfront.net is a public suffix); give the distribution an alternate domain "
            "name under the proxy's own domain (cloudfront.domain) and set "
            "cloudfront.cookie_domain"
        )
    return scope


def check_cookie_domain(settings: CloudFrontSettings, problems: list[str]) -> None:
    """Cookies for Domain=example.com reach cdn.example.com, and no other host."""
    cookie_domain = settings.cookie_domain
    host = settings.host
    if (
        cookie_domain is not None
        and host != cookie_domain
        and not host.endswith("." + cookie_domain)
    ):
        problems.append(
            f"cloudfront.cookie_domain: {cookie_domain} does not include the distribution's "
            f"host {host}, so browsers would never send it the cookies; use a parent domain "
            "of it (e.g. example.com for cdn.example.com)"
        )


def route_field_problems(delivery: str, fields_set: set[str], where: str) -> list[str]:
    """Route keys a CloudFront URL cannot carry: refused rather than silently ignored."""
    if delivery != "cloudfront":
        return []
    found = []
    for name in ("cache_control", "disposition", "content_type", "inline_types", "cache"):
        if name in fields_set:
            found.append(
                f"{where}.{name}: a CloudFront URL cannot carry response headers or use the "
                "proxy's cache; set them on the objects' metadata or a CloudFront response "
                "headers policy, and remove it here"
            )
    return found
