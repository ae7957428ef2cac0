"""A request's audit lines, from its RequestContext once it has ended. No I/O: the trail
writes them.

Rules:
1. Every line names who asked and how it ended: `request_id`, `sub`, `iss`, `client`,
   `route`, `method`, `status`, then the object (`bucket`, `key`) and `delivery` when the
   request has them, then the event's own fields (which may name another route or object: an
   entry of a sign API batch).
2. The outcome adds its own event: a 401, 403 or 429 is `access.denied`; an upload (a PUT
   that named its object) that failed otherwise is `upload.refused`; each with the reason.
3. A `url.signed` is kept only when the answer carrying the URL went out (a status below
   400): a URL signed for a batch that then failed was never handed to anyone.
4. Only what the request value holds gets in: the subject and issuer of a verified
   credential (never the credential), the object's bucket and key (never its customer key).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..request import RequestContext
from .trail import AuditTrail

DENIED = frozenset({401, 403, 429})


def write_request_events(trail: AuditTrail, context: RequestContext) -> None:
    """Append the ended request's events to the trail, in the order they happened. (On every
    audited request: each line is built once, in place, in its final order.)"""
    for event, fields in _events(context):
        line = trail.start(event)
        _fill(line, context)
        line.update(fields)
        trail.append(line)


def request_events(context: RequestContext) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, fields) for each line the ended request writes (rules 1-3), without `time`."""
    for event, fields in _events(context):
        line: dict[str, Any] = {}
        _fill(line, context)
        line.update(fields)
        yield event, line


def _events(context: RequestContext) -> Iterator[tuple[str, dict[str, Any]]]:
    """The request's own events (rule 3), then its outcome's (rule 2), without rule 1's."""
    status = context.status
    for event, fields in context.events or ():
        if event != "url.signed" or status < 400:
            yield event, fields
    if status in DENIED:
        yield "access.denied", {"reason": context.reason}
    elif context.method == "PUT" and context.object is not None and status >= 400:
        yield "upload.refused", {"reason": context.reason}


def _fill(line: dict[str, Any], context: RequestContext) -> None:
    """Rule 1's fields, after whatever `line` holds."""
    line["request_id"] = context.id
    line["sub"] = context.sub
    line["iss"] = context.iss
    line["client"] = context.client
    line["route"] = context.route
    line["method"] = context.method
    line["status"] = context.status
    ref = context.object
    if ref is not None:
        line["bucket"] = ref.bucket
        line["key"] = ref.key
    if context.delivery is not None:
        line["delivery"] = context.delivery
