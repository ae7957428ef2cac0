"""One request as values: the object it names as S3 sees it. No I/O; never prints a key.

Rule: whatever decides S3's answer is part of the object's name. Storage calls take an
`ObjectRef`, and every cache of what S3 answered (objects, metadata, signed links) is keyed
by one, so a cache cannot be keyed by less than S3 was asked with: two routes that read one
bucket and key with different SSE-C customer keys name two objects, and never share a body.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ssec import CustomerKey


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """An object as S3 sees it: bucket, key, and the SSE-C customer key it is read or written
    with (None: none). Equal and hashed by all three (the customer key by its fingerprint)."""

    bucket: str
    key: str
    sse: CustomerKey | None = None
