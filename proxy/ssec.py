"""SSE-C customer keys: parsed once from config, and the three headers S3 wants with every GET
and HEAD of an object encrypted with one. No I/O; never prints the key.

S3 keeps no copy of a customer key: whoever reads the object must send it on each request,
as x-amz-server-side-encryption-customer-algorithm / -key / -key-MD5. A presigned URL cannot
carry them (S3 wants them as headers, which a browser following a redirect does not send), so
such keys only work where the proxy itself fetches the object (delivery: stream).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

KEY_BYTES = 32  # AES-256, the only algorithm S3 accepts for SSE-C
GENERATE_COMMAND = "openssl rand -base64 32"


@dataclass(frozen=True)
class CustomerKey:
    """One customer key. Equality and hashing go by its fingerprint (SHA-256 of the key,
    computed once): a cache keyed by an ObjectRef tells two keys apart without the key
    itself sitting in its identity."""

    key: bytes = field(compare=False, repr=False)
    fingerprint: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", hashlib.sha256(self.key).digest())

    @classmethod
    def parse(cls, text: str) -> CustomerKey:
        """A key given as its 32 raw bytes, or as their base64 (44 characters). Raises
        ValueError saying what is expected."""
        raw = text.encode("utf-8")
        if len(raw) == KEY_BYTES:
            return cls(raw)
        try:
            decoded = base64.b64decode(raw, validate=True)
        except binascii.Error:
            decoded = b""
        if len(decoded) != KEY_BYTES:
            raise ValueError(
                f"must be a 256-bit AES key: {KEY_BYTES} bytes, or their base64 "
                f"({len(raw)} characters given); generate one with: {GENERATE_COMMAND}"
            )
        return cls(decoded)

    @property
    def headers(self) -> dict[str, str]:
        """The request headers S3 needs (names in lower case, as SigV4 signs them)."""
        digest = hashlib.md5(self.key, usedforsecurity=False).digest()
        return {
            "x-amz-server-side-encryption-customer-algorithm": "AES256",
            "x-amz-server-side-encryption-customer-key": base64.b64encode(self.key).decode(),
            "x-amz-server-side-encryption-customer-key-md5": base64.b64encode(digest).decode(),
        }

    def __repr__(self) -> str:  # never print a key by accident
        return "CustomerKey(...)"
