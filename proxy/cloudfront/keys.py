"""CloudFront key pairs: read a PEM key, check it is one CloudFront accepts (RSA 2048 or ECDSA
P-256), sign and verify. No file I/O; key material never reaches a message, repr or log.

CloudFront hashes the policy with SHA-1 (or SHA-256 when `Hash-Algorithm=SHA256` rides
along) and signs it with the key pair's private key: RSA with PKCS #1 v1.5 padding, or ECDSA
with a DER-encoded signature, exactly what `openssl sha1 -sign key.pem` writes for either.
ECDSA signs deterministically (RFC 6979) where OpenSSL can, so that a `stable` URL is the same
in every process; a random ECDSA signature verifies just as well, it only varies.

What AWS documents, and this follows: "CloudFront supports signed URLs and signed cookies with
RSA 2048 or ECDSA 256 key signatures" (the PublicKey API reference); the signature is what
`openssl sha1 -sign private_key.pem` makes, "the private key signature can be either RSA 2048
or ECDSA 256" (developer guide, "Linux commands and OpenSSL for base64 encoding and
encryption"); SHA-256 with `Hash-Algorithm=SHA256` or the `CloudFront-Hash-Algorithm` cookie.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

HashName = Literal["SHA1", "SHA256"]
HASH_NAMES: tuple[HashName, ...] = ("SHA1", "SHA256")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"SHA1": hashes.SHA1, "SHA256": hashes.SHA256}
_DETERMINISTIC = backend.ecdsa_deterministic_supported()

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class KeyProblem(ValueError):
    """A key CloudFront would not take, or that could not be read; never quotes the key."""


def describe(key: PrivateKey | PublicKey) -> str:
    """`RSA 2048` or `ECDSA P-256`: what an operator may see of a key."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return f"ECDSA {key.curve.name}"


def _check_kind(key: object) -> None:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size != 2048:
            raise KeyProblem(
                f"an RSA key of {key.key_size} bits; CloudFront takes RSA 2048 or ECDSA P-256 "
                "(make one with: openssl genrsa -out private_key.pem 2048)"
            )
        return
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyProblem(
                f"an ECDSA key on curve {key.curve.name}; CloudFront takes P-256 (prime256v1): "
                "openssl ecparam -name prime256v1 -genkey -noout -out private_key.pem"
            )
        return
    raise KeyProblem(
        "neither RSA nor ECDSA; CloudFront takes RSA 2048 or ECDSA P-256 "
        "(make one with: openssl genrsa -out private_key.pem 2048)"
    )


def load_private_key(pem: bytes) -> PrivateKey:
    """The private key in `pem` (PKCS #1, SEC 1 or PKCS #8, unencrypted), checked."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise KeyProblem(
            "the key is encrypted; store it unencrypted (PEM, no passphrase)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyProblem(
            "not a PEM private key (expected -----BEGIN PRIVATE KEY----- or "
            "-----BEGIN RSA/EC PRIVATE KEY-----)"
        ) from None
    _check_kind(key)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):  # for the types
        raise KeyProblem("neither RSA nor ECDSA")
    return key


def load_public_key(pem: bytes) -> PublicKey:
    """The public key in `pem` (SubjectPublicKeyInfo, as CloudFront's console takes it)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyProblem("not a PEM public key (expected -----BEGIN PUBLIC KEY-----)") from None
    _check_kind(key)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):  # for the types
        raise KeyProblem("neither RSA nor ECDSA")
    return key


def public_pem(key: PublicKey) -> str:
    """The public key as CloudFront's console and API take it (PEM SubjectPublicKeyInfo)."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


@dataclass(frozen=True)
class VerifyingKey:
    """A public key of the trusted key group, by its ID."""

    key_id: str
    public: PublicKey = field(repr=False)

    def verify(self, message: bytes, signature: bytes, hash_name: HashName) -> bool:
        digest = _HASHES[hash_name]()
        try:
            if isinstance(self.public, rsa.RSAPublicKey):
                self.public.verify(signature, message, padding.PKCS1v15(), digest)
            else:
                self.public.verify(signature, message, ec.ECDSA(digest))
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"VerifyingKey({self.key_id}, {describe(self.public)})"


@dataclass(frozen=True)
class SigningKey:
    """The private key of one key pair, by the ID CloudFront knows its public key under."""

    key_id: str
    private: PrivateKey = field(repr=False)
    # What tells two keys apart even under one ID (a key file replaced on reload): a digest
    # of the public key, safe to hold in a cache key or to show.
    fingerprint: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        public = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        object.__setattr__(self, "fingerprint", hashlib.sha256(public).hexdigest()[:32])

    def sign(self, message: bytes, hash_name: HashName = "SHA1") -> bytes:
        digest = _HASHES[hash_name]()
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(message, padding.PKCS1v15(), digest)
        return self.private.sign(message, ec.ECDSA(digest, deterministic_signing=_DETERMINISTIC))

    def verifying(self) -> VerifyingKey:
        return VerifyingKey(self.key_id, self.private.public_key())

    def __repr__(self) -> str:
        return f"SigningKey({self.key_id}, {describe(self.private)})"
