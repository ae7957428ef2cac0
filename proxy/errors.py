"""The one place HTTP error statuses are chosen; never does I/O or formats responses.

Every refusal the proxy makes is one of these classes. `detail` is what the client may read
(short, generic, never secret); `reason` is what the access log records (may say which check
failed, but never a token, cookie, credential or URL signature).
"""

from __future__ import annotations

from collections.abc import Mapping


class ProxyError(Exception):
    status: int = 500
    detail: str = "internal error"

    def __init__(
        self,
        reason: str | None = None,
        *,
        detail: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.reason = reason or self.detail
        if detail is not None:
            self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(self.reason)


class SignInRedirect(ProxyError):
    """Not a failure of the proxy: a browser navigation without a usable token, on a route
    that accepts sign-in sessions, is sent to sign in (302) instead of being shown a 401."""

    status = 302
    detail = "sign-in required"

    def __init__(self, reason: str, *, location: str) -> None:
        super().__init__(reason, headers={"Location": location})


class BadRequest(ProxyError):
    status = 400
    detail = "bad request"


class Unauthenticated(ProxyError):
    """No usable credentials. The client is told how to authenticate, not why it failed."""

    status = 401
    detail = "authentication required"

    def __init__(
        self,
        reason: str | None = None,
        *,
        invalid_token: bool = False,
        description: str | None = None,
    ) -> None:
        challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
        if description is not None:
            # RFC 6750 3: said only where the client can act on it (a revoked token: sign
            # in again); never a detail of a failed signature check. The body says the same.
            challenge += f', error_description="{description}"'
        super().__init__(reason, detail=description, headers={"WWW-Authenticate": challenge})


class Forbidden(ProxyError):
    status = 403
    detail = "forbidden"


class NotFound(ProxyError):
    status = 404
    detail = "not found"


class UploadNotFound(NotFound):
    """A multipart upload id S3 does not hold for the caller's key: never begun there,
    completed, aborted, or another user's (the id of another key is not told apart)."""

    detail = "no such upload"


class MethodNotAllowed(ProxyError):
    status = 405
    detail = "method not allowed"

    def __init__(self, reason: str | None = None, *, allowed: str = "GET, HEAD") -> None:
        super().__init__(reason, headers={"Allow": allowed})


class RequestTimeout(ProxyError):
    """The request head (`limits.header_timeout`) or body (`limits.body_timeout`) did not
    arrive in time."""

    status = 408
    detail = "request timeout"


class LengthRequired(ProxyError):
    status = 411
    detail = "Content-Length required"


class PayloadTooLarge(ProxyError):
    status = 413
    detail = "request too large"


class UriTooLong(ProxyError):
    status = 414
    detail = "request target too long"


class UnsupportedMediaType(ProxyError):
    status = 415
    detail = "expected application/json"


class Conflict(ProxyError):
    status = 409
    detail = "conflict"


class PreconditionFailed(ProxyError):
    status = 412
    detail = "precondition failed"


class KeyExists(ProxyError):
    """An upload to a key that exists, on a route with `upload.overwrite: false`: the route's
    rule, not a precondition the client sent (that would be 412)."""

    status = 409
    detail = "an object exists at this path and this route does not replace it"


class RangeNotSatisfiable(ProxyError):
    status = 416
    detail = "range not satisfiable"

    def __init__(self, reason: str | None = None, *, size: int | None = None) -> None:
        headers = {"Content-Range": f"bytes */{size}"} if size is not None else {}
        super().__init__(reason, headers=headers)


class ExpectationFailed(ProxyError):
    status = 417
    detail = "expectation failed"


class HeaderFieldsTooLarge(ProxyError):
    status = 431
    detail = "request header fields too large"


class MethodNotImplemented(ProxyError):
    """A method this server does not know at all (405 is for known methods a route refuses)."""

    status = 501
    detail = "method not implemented"


class TransferCodingNotImplemented(ProxyError):
    """A request body in a transfer coding other than chunked (RFC 9112 6.1)."""

    status = 501
    detail = "transfer coding not implemented"


class HttpVersionNotSupported(ProxyError):
    """A request line with a major version this server does not speak (HTTP/2.0 and up on
    an HTTP/1.1 connection)."""

    status = 505
    detail = "HTTP version not supported"


class UpstreamError(ProxyError):
    """S3 failed, refused or was unreachable. The client never sees S3's own words."""

    status = 502
    detail = "storage unavailable"


class ProviderUnavailable(ProxyError):
    """The sign-in provider (auth.login) was unreachable, slow, or answered nonsense."""

    status = 502
    detail = "sign-in provider unavailable"


class UpstreamTimeout(ProxyError):
    status = 504
    detail = "storage timed out"


class NoFirstByte(UpstreamTimeout):
    """S3 sent no response head within s3.first_byte_timeout: stalled, as in a brownout. Told
    apart from other timeouts so that /readyz can say S3 is stalling."""


class StorageBusy(ProxyError):
    """Every connection to S3 is in use: a quick 503 the client may retry, not a 504 after
    a minute's wait. S3 itself is fine, so this is not an UpstreamError."""

    status = 503
    detail = "busy, try again"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, headers={"Retry-After": "1"})


class StateUnavailable(ProxyError):
    """The shared state (Redis) did not answer in time and the configured behaviour for it is
    to refuse (`state.when_down`): revocations by default, rate limits if asked."""

    status = 503
    detail = "temporarily unavailable, try again"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, headers={"Retry-After": "1"})


class NotModified(Exception):
    """Not an error: a conditional request matched. Carries the validators to echo back."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = dict(headers)
        super().__init__("not modified")
