"""What an upload may be: its declared media type against the route's allow-list and its
declared size against `upload.max_bytes`. No I/O; every refusal here comes before a body byte
is read or a URL is signed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Route, UploadSettings
from ..contenttype import InlineTypes, essence, safe_content_type
from ..errors import PayloadTooLarge, UnsupportedMediaType
from ..request import ObjectRef


@dataclass(frozen=True)
class UploadTarget:
    """One upload, decided: where it goes, as what, and under which limits."""

    route: str
    ref: ObjectRef  # the object written, with the route's customer key if it has one
    content_type: str  # as S3 will store it (the declared type, normalized)
    settings: UploadSettings


def upload_target(route: Route, ref: ObjectRef, declared_type: str | None) -> UploadTarget:
    """The target of an upload to `ref` on `route`, or 415 for a missing, malformed or
    disallowed Content-Type. The route must take uploads (config checks methods and upload)."""
    settings = route.settings.upload
    allowed = route.upload_types
    if settings is None or allowed is None:
        raise UnsupportedMediaType("route takes no uploads", detail="route takes no uploads")
    return UploadTarget(route.name, ref, allowed_type(allowed, declared_type), settings)


def allowed_type(allowed: InlineTypes, declared: str | None) -> str:
    """The type to store, parsed strictly (contenttype.essence); 415 unless it is allowed."""
    if declared is None:
        raise UnsupportedMediaType("upload without Content-Type", detail="Content-Type required")
    kind = essence(declared)
    if kind is None:
        raise UnsupportedMediaType(
            "upload with a malformed Content-Type", detail="malformed Content-Type"
        )
    if not allowed.allows(kind):
        # The reason names only the parsed essence: a bounded, well-formed token pair.
        raise UnsupportedMediaType(
            f"upload type {kind[:64]} not allowed", detail="Content-Type not allowed here"
        )
    return safe_content_type(declared)


def check_size(settings: UploadSettings, size: int | None) -> None:
    """413 for a declared size over `upload.max_bytes` (None: not declared, counted later)."""
    if size is not None and size > settings.max_bytes:
        raise PayloadTooLarge(
            f"upload of {size} bytes over upload.max_bytes",
            detail=f"at most {settings.max_bytes} bytes",
        )
