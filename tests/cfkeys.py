"""Key pairs for the CloudFront tests, made once per session, and a config with them."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .conftest import config_dict

KEY_ID = "K2JCJMDEHXQW5F"
OTHER_ID = "K3OTHERKEY0001"
DOMAIN = "cdn.example.com"


def rsa_key(bits: int = 2048, seed: int = 0) -> rsa.RSAPrivateKey:
    """The same key for the same (bits, seed), however the call spells them."""
    return _rsa_key(bits, seed)


def ec_key(seed: int = 0, curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return _ec_key(seed, curve)


@cache
def _rsa_key(bits: int, seed: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@cache
def _ec_key(seed: int, curve: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1() if curve == "P-256" else ec.SECP384R1())


def private_pem(key: Any, fmt: str = "pkcs8") -> bytes:
    form = (
        serialization.PrivateFormat.PKCS8
        if fmt == "pkcs8"
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    data: bytes = key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())
    return data


def public_pem(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def write_key(folder: Path, name: str, pem: bytes) -> Path:
    path = folder / name
    path.write_bytes(pem)
    os.chmod(path, 0o600)
    return path


CLOUDFRONT_ROUTES = [
    {
        "name": "cdn-photos",
        "match": "/cdn/photos/{id}",
        "bucket": "hr-private",
        "key": "employees/{id}/photo.jpg",
        "delivery": "cloudfront",
        "access": "authenticated",
        "ttl": 300,
        "stable": 3600,
    },
    {
        "name": "cdn-albums",
        "match": "/cdn/albums/{album}/{name}",
        "bucket": "hr-private",
        "key": "albums/{album}/{name}",
        "delivery": "cloudfront",
        "cookie_scope": "albums/{album}/*",
        "access": "authenticated",
        "ttl": 600,
    },
]


def cloudfront_config(
    key_file: Path, endpoint: str | None = None, domain: str = DOMAIN, **section: Any
) -> dict[str, Any]:
    """The test config plus a cloudfront section and the issue's two cloudfront routes."""
    data = config_dict(endpoint)
    data["cloudfront"] = {
        "domain": domain,
        "key_pair_id": KEY_ID,
        "private_key": str(key_file),
        **section,
    }
    data["routes"] = [*data["routes"], *(dict(route) for route in CLOUDFRONT_ROUTES)]
    return data
