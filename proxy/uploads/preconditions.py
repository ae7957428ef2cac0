"""A PUT's preconditions and the route's `overwrite`, judged on the object at the key before any
byte is stored or any URL signed, and what S3 is told to check as the object is stored.
The rules themselves (RFC 9110 13.2.2) are conditional.py's; this module applies them to
uploads. Its rules:

1. One look (a HEAD) at the key decides, in this order: the client's If-Match, If-None-Match
   and If-Unmodified-Since (`write_preconditions_hold`; failing, 412), then `overwrite: false`
   on an existing key (409: the route's rule, not the client's). The look also tells creating
   (201) from replacing (200).
2. What the look found is pinned on the write when there is something to protect (the client
   made the write conditional, or the route does not replace objects): S3 stores the object
   only if the key still holds the object seen (`If-Match: <its ETag>`) or still holds none
   (`If-None-Match: *`). So no write can land between the look and this one and be lost: S3
   refuses this one instead, which is the client's 412 (it asked for a guard), or the
   route's 409. A racing write is refused, not judged again.
3. An unconditional upload on an `overwrite: true` route pins nothing: the last write wins, as
   a PUT does, and creating or replacing is as the look saw it.
4. A redirect upload (307) is judged the same way by the proxy, looking only when there is
   something to judge. Its presigned PUT then signs what S3 checks itself and the client
   sends again when it follows the 307: its own `If-None-Match: *`, or an `If-Match` of one
   strong tag (`signed_preconditions`). Nothing else can be pinned: If-Unmodified-Since,
   tag lists, `If-Match: *` and `overwrite: false` (without the client's own
   `If-None-Match: *`) hold when the proxy looks, and a write between the 307 and the
   client's PUT may get past them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..conditional import (
    entity_tags,
    field_lines,
    has_write_preconditions,
    write_preconditions_hold,
)
from ..errors import KeyExists, NotFound, PreconditionFailed, ProxyError
from ..storage import ObjectMeta, Storage, WriteCondition
from .rules import UploadTarget

NO_HEADERS: Mapping[str, str] = {}


@dataclass(frozen=True)
class WritePlan:
    """An upload, judged: whether it replaces an object, and what S3 checks as it stores it."""

    replaces: bool  # an object was at the key when the proxy looked (or it did not look)
    condition: WriteCondition | None  # rule 2; None: rule 3
    client_conditional: bool  # the client sent a precondition

    def refused(self) -> ProxyError:
        """What S3's refusal of `condition` means to the client: another write came first."""
        if self.client_conditional:
            return PreconditionFailed("another write changed the object first")
        return KeyExists("another upload took the key first (overwrite is false)")


async def plan_write(
    storage: Storage, target: UploadTarget, headers: Mapping[str, str], always_look: bool
) -> WritePlan:
    """Rules 1-3: 412 or 409 before anything is stored, else the plan. `always_look`: look at
    the key even when nothing is to be judged (a stream upload answers 201 or 200 by it)."""
    conditional = has_write_preconditions(headers)
    overwrite = target.settings.overwrite
    if not (conditional or not overwrite or always_look):
        return WritePlan(True, None, False)
    current = await _current(storage, target)
    exists = current is not None
    etag = current.etag if current is not None else None
    last_modified = current.last_modified if current is not None else None
    if conditional and not write_preconditions_hold(headers, exists, etag, last_modified):
        raise PreconditionFailed("upload precondition failed")
    if exists and not overwrite:
        raise KeyExists("upload to an existing key (overwrite is false)")
    condition = None
    if conditional or not overwrite:
        if exists and etag is None:
            raise PreconditionFailed("the object at the key has no ETag to pin the write to")
        condition = WriteCondition(etag)
    return WritePlan(exists, condition, conditional)


def signed_preconditions(headers: Mapping[str, str]) -> dict[str, str]:
    """Rule 4: the client's preconditions S3 can check on a presigned PUT, as signed headers
    (lower-case names, the values as the client sends them)."""
    signed: dict[str, str] = {}
    if_none_match = field_lines(headers, "If-None-Match")
    if len(if_none_match) == 1 and if_none_match[0].strip() == "*":
        signed["if-none-match"] = "*"
    if_match = field_lines(headers, "If-Match")
    if len(if_match) == 1:
        tags = entity_tags(if_match[0])
        if tags is not None and len(tags) == 1 and not tags[0][0]:
            signed["if-match"] = if_match[0].strip()
    return signed


async def _current(storage: Storage, target: UploadTarget) -> ObjectMeta | None:
    try:
        return await storage.head(target.ref)
    except NotFound:
        return None
