"""What both engines share: credentials from the standard AWS chain, and presigned URLs (GET,
PUT, POST forms, multipart parts) signed by the proxy's own presign.py. Makes no S3 request.

Both engines presign with presign.py, not botocore's generate_presigned_url: that one always
signs "now", so it cannot back-date a URL to the start of a `stable` window, and a browser
could never cache a redirect to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiobotocore.session import AioSession

from ..config import S3Settings
from ..errors import UpstreamError
from ..presign import (
    REQUEST_ID_PARAM,
    Credentials,
    Endpoint,
    Lifetime,
    PostForm,
    aws_endpoint,
    presign_post,
    presign_url,
)
from ..request import ObjectRef
from ..storage import OVERRIDE_PARAMS, translate_errors
from .writes import ObjectWriter

log = logging.getLogger("proxy.storage")
_REREAD_TEMPORARY = 30.0  # seconds between re-reads of refreshable credentials


class Signer:
    """Credentials read once at open() (static keys) or every 30 s (temporary ones, which
    aiobotocore refreshes ahead of their expiry), and URLs presigned for the public endpoint.
    """

    def __init__(self, settings: S3Settings, session: AioSession) -> None:
        self._settings = settings
        self._session = session
        self._chain: Any = None
        self._frozen: Credentials | None = None
        self._reread_at = 0.0
        internal = settings.endpoint_url or aws_endpoint(settings.region)
        self.endpoint = Endpoint.parse(internal, settings.addressing_style)
        # Browsers may need another address than the proxy uses (e.g. a MinIO service name).
        public = settings.public_endpoint_url or internal
        self._public_endpoint = Endpoint.parse(public, settings.addressing_style)

    async def open(self) -> None:
        self._chain = await self._session.get_credentials()
        if self._chain is None:
            # Said once at start-up, not only as a 502 on each request that needs S3.
            log.warning(
                "no AWS credentials found: streaming (GetObject, HeadObject) and signing "
                "redirect URLs will fail with 502. Provide them through the standard chain "
                "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in AWS_PROFILE, or an "
                "instance or task role), then restart the proxy"
            )

    @property
    def has_credentials(self) -> bool:
        """Whether the standard chain gave credentials at open() (for readiness checks)."""
        return self._chain is not None

    def current(self) -> Credentials | None:
        """The credentials in hand, when they need no re-read (a call without an await)."""
        cached = self._frozen
        if cached is not None and (cached.expires_at is None or time.time() < self._reread_at):
            return cached
        return None

    async def credentials(self, operation: str) -> Credentials:
        """Credentials for `operation` (named in the error when there are none)."""
        cached = self.current()
        if cached is not None:
            return cached
        fresh = await self._read(operation)
        self._frozen, self._reread_at = fresh, time.time() + _REREAD_TEMPORARY
        return fresh

    async def _read(self, operation: str) -> Credentials:
        if self._chain is None:
            raise UpstreamError(f"{operation}: no AWS credentials found in the standard chain")
        with translate_errors(f"{operation} credentials"):
            frozen = await self._chain.get_frozen_credentials()
        expiry = getattr(self._chain, "_expiry_time", None)  # refreshable ones only
        return Credentials(
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            token=frozen.token,
            expires_at=expiry.timestamp() if isinstance(expiry, datetime) else None,
        )

    def presign(
        self,
        credentials: Credentials,
        method: str,
        bucket: str,
        key: str,
        lifetime: Lifetime,
        overrides: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> str:
        params = {OVERRIDE_PARAMS[name.lower()]: value for name, value in (overrides or {}).items()}
        if request_id is not None:
            params[REQUEST_ID_PARAM] = request_id
        return presign_url(
            endpoint=self._public_endpoint,
            region=self._settings.region,
            credentials=credentials,
            method=method,
            bucket=bucket,
            key=key,
            signed_at=lifetime.signed_at,
            expires_in=lifetime.expires_in,
            params=params,
        )

    def presign_put(
        self,
        credentials: Credentials,
        bucket: str,
        key: str,
        lifetime: Lifetime,
        content_type: str,
        content_length: int,
        preconditions: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> str:
        signed = {"content-type": content_type, "content-length": str(content_length)}
        return presign_url(
            endpoint=self._public_endpoint,
            region=self._settings.region,
            credentials=credentials,
            method="PUT",
            bucket=bucket,
            key=key,
            signed_at=lifetime.signed_at,
            expires_in=lifetime.expires_in,
            params={REQUEST_ID_PARAM: request_id} if request_id is not None else None,
            signed_headers={**signed, **(preconditions or {})},
        )

    def presign_post(
        self,
        credentials: Credentials,
        bucket: str,
        key: str,
        content_type: str,
        max_bytes: int,
        lifetime: Lifetime,
    ) -> PostForm:
        return presign_post(
            endpoint=self._public_endpoint,
            region=self._settings.region,
            credentials=credentials,
            bucket=bucket,
            key=key,
            content_type=content_type,
            max_bytes=max_bytes,
            signed_at=lifetime.signed_at,
            expires_at=lifetime.expires_at,
        )

    def presign_part(
        self,
        credentials: Credentials,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        content_length: int,
        lifetime: Lifetime,
    ) -> str:
        # The length is signed so that parts add up to no more than the size the caller
        # declared (and was allowed): S3 refuses a part of any other length.
        return presign_url(
            endpoint=self._public_endpoint,
            region=self._settings.region,
            credentials=credentials,
            method="PUT",
            bucket=bucket,
            key=key,
            signed_at=lifetime.signed_at,
            expires_in=lifetime.expires_in,
            params={"partNumber": str(number), "uploadId": upload_id},
            signed_headers={"content-length": str(content_length)},
        )


class SignedByTheProxy:
    """The Storage methods both engines answer alike: credentials and presigned URLs from
    their `Signer`, uploads' S3 calls from their `ObjectWriter`. An engine sets `_signer` and
    `_writes` in its constructor."""

    _signer: Signer
    _writes: ObjectWriter

    async def credentials(self) -> Credentials:
        return await self._signer.credentials("presign")

    def presign(
        self,
        credentials: Credentials,
        method: str,
        ref: ObjectRef,
        lifetime: Lifetime,
        overrides: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> str:
        return self._signer.presign(
            credentials, method, ref.bucket, ref.key, lifetime, overrides, request_id
        )

    @property
    def writes(self) -> ObjectWriter:
        """Uploads' S3 calls, over an aiobotocore client of their own created on the first
        upload (engines/writes.py): uploads never hold one of the reads' connections."""
        return self._writes

    def presign_put(
        self,
        credentials: Credentials,
        ref: ObjectRef,
        lifetime: Lifetime,
        content_type: str,
        content_length: int,
        preconditions: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> str:
        return self._signer.presign_put(
            credentials,
            ref.bucket,
            ref.key,
            lifetime,
            content_type,
            content_length,
            preconditions,
            request_id,
        )

    def presign_post(
        self,
        credentials: Credentials,
        ref: ObjectRef,
        content_type: str,
        max_bytes: int,
        lifetime: Lifetime,
    ) -> PostForm:
        return self._signer.presign_post(
            credentials, ref.bucket, ref.key, content_type, max_bytes, lifetime
        )

    def presign_part(
        self,
        credentials: Credentials,
        ref: ObjectRef,
        upload_id: str,
        number: int,
        content_length: int,
        lifetime: Lifetime,
    ) -> str:
        return self._signer.presign_part(
            credentials, ref.bucket, ref.key, upload_id, number, content_length, lifetime
        )
