"""The one interface every delivery method implements (stream.py, redirect.py, cloudfront.py,
and each one to come): answer a GET or HEAD for an admitted object, and name the link the sign
API hands out for it. No I/O here.

A method runs only after access was granted: `ref` is the object the caller may read, and
`context` carries who asks (client, subject_key for limits, expires_at that nothing signed
may outlive) and takes what the method did (bytes sent, first byte, why it was cut short).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from ..config import Route
from ..request import ObjectRef, RequestContext


@dataclass(frozen=True, slots=True)
class Link:
    """What the sign API hands out for one object."""

    url: str  # where the client fetches the object: a signed URL, or the proxy's own path
    expires_at: str | None  # ISO 8601 UTC; None: good for as long as the caller's token
    # Signed cookies (cloudfront with cookie_scope): the Resource they cover, and the
    # Set-Cookie values the sign API's answer must carry for `url` to open.
    cookie_scope: str | None = None
    set_cookies: tuple[str, ...] = ()


class Method(Protocol):
    async def answer(
        self, request: web.BaseRequest, context: RequestContext, route: Route, ref: ObjectRef
    ) -> web.StreamResponse:
        """The response to a GET or HEAD of the object (statuses decided before prepare())."""
        ...

    async def link(self, context: RequestContext, route: Route, ref: ObjectRef, path: str) -> Link:
        """The sign API's answer for the object, requested at `path` on this proxy."""
        ...
