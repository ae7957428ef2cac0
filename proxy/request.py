"""One request as values: the object it names as S3 sees it, and the request itself as it
flows. No I/O; never holds a token, a cookie or a customer key in a printable field.

Rule: whatever decides S3's answer is part of the object's name. Storage calls take an
`ObjectRef`, and every cache of what S3 answered (objects, metadata, signed links) is keyed
by one, so a cache cannot be keyed by less than S3 was asked with: two routes that read one
bucket and key with different SSE-C customer keys name two objects, and never share a body.

`RequestContext` is filled in by the gateway and each surface as the request flows (who asks,
through which route, for which object, with what outcome), and read by what reports on it:
the access line, the metrics and the audit trail. A surface (or a delivery method) records an
audit event with one call, `context.audit("url.signed", expires=...)`; the Gateway writes the
request's events with who asked when the request ends (audit/events.py decides the lines).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .ssec import CustomerKey


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """An object as S3 sees it: bucket, key, and the SSE-C customer key it is read or written
    with (None: none). Equal and hashed by all three (the customer key by its fingerprint)."""

    bucket: str
    key: str
    sse: CustomerKey | None = None
    # The hash of all three, computed once: every cache lookup of a request hashes its ref.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.bucket, self.key, self.sse)))

    def __hash__(self) -> int:
        return self._hash


def new_request_id() -> str:
    """16 hex digits from os.urandom: unique across processes and replicas without
    coordination, and unpredictable (the audit trail files events under it). Drawn from a
    block read 512 ids at a time: one getrandom() per request was a syscall of its own."""
    global _random_block, _random_at
    at = _random_at
    if at >= len(_random_block):
        _random_block, at = os.urandom(8 * 512), 0
    _random_at = at + 8
    return _random_block[at : at + 8].hex()


_random_block = b""
_random_at = 0


def _forget_random_block() -> None:
    """A forked worker must not hand out the ids its parent's block still holds."""
    global _random_block, _random_at
    _random_block, _random_at = b"", 0


os.register_at_fork(after_in_child=_forget_random_block)


# An id a trusted proxy may hand on: short, and safe in a header, a log line and a URL query.
_GIVEN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(given: str | None, from_trusted_proxy: bool) -> str:
    """The request's id: the `X-Request-Id` a trusted proxy in front sent (so one id follows
    the request through both), else a new one. Never a client's own: it could then choose
    which audit events its requests are filed under, or pose as another request."""
    if from_trusted_proxy and given is not None and _GIVEN_ID.fullmatch(given):
        return given
    return new_request_id()


@dataclass(slots=True)
class RequestContext:
    """One request, filled in as it flows and read once it ends."""

    method: str
    path: str  # the raw path without its query string
    # Who sent it, as the edge resolved it (edge.py rule 6): the peer, or behind
    # listen.trusted_proxies the client they name. Every limit, lease and log line reads it
    # from here.
    client: str | None
    started: float = 0.0  # perf_counter() at arrival
    id: str = field(default_factory=new_request_id)
    route: str | None = None  # the route's name, or the surface's ("sign-api", "metrics"...)
    delivery: str | None = None  # "stream", "redirect", "auto:stream", "sign"...
    # The caller, once a credential was verified:
    sub: str | None = None  # `sub` as logged (cut at 256 characters)
    iss: str | None = None
    token_source: str | None = None  # "header", "cookie", "query", "share link"
    subject_key: str | None = None  # whom per-subject limits count (access.subject_key)
    expires_at: float | None = None  # the credential's `exp`: nothing signed may outlive it
    # The verified claims, which a revocation made while the request runs is judged on
    # (state.State.watch); never logged. `via_link`: they are a share link's.
    claims: Mapping[str, Any] | None = None
    via_link: bool = False
    object: ObjectRef | None = None  # once access has named it
    # The outcome:
    status: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0  # an upload's body, as stored
    reason: str | None = None
    first_byte: float | None = None  # perf_counter() when the first body byte was written
    cors: dict[str, str] | None = None  # CORS headers every response must carry; not logged
    # The audit trail (audit.path): whether it is on, and this request's events so far.
    audited: bool = False
    events: list[tuple[str, dict[str, Any]]] | None = None

    def audit(self, event: str, **fields: Any) -> None:
        """Record an audit event of this request (nothing when the trail is off). Written when
        the request ends, after who asked, the route, object and final status: give `route`,
        `bucket` and `key` only for an entry that is not the request's own (a sign API batch).
        Never pass a token, cookie, signature, signed URL or customer key."""
        if self.audited:
            if self.events is None:
                self.events = []
            self.events.append((event, fields))
