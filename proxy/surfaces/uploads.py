"""PUT of an authorized object: a 307 to a presigned PUT (redirect routes), or the body
streamed to S3 through the proxy (stream routes), holding one of the stream slots as a
download would. What uploads/ decides (type, size, preconditions, overwrite, multipart, the
answer's status) stays there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager

from aiohttp import web

from ..auth import Clock
from ..conditional import has_write_preconditions
from ..config import Config, Route
from ..delivery.stream import watch_credential
from ..ops import Telemetry
from ..request import ObjectRef, RequestContext
from ..state import State
from ..storage import Storage
from ..uploads import UploadTarget, receive, redirect_put, stored, upload_target


class Uploads:
    """One config's uploads. `forget` is told of each object stored through the proxy, so
    the caches of what S3 answered drop their stale copies."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        clock: Clock,
        state: State,
        forget: Callable[[ObjectRef], None],
        telemetry: Telemetry,
    ) -> None:
        self._telemetry = telemetry
        self._storage = storage
        self._clock = clock
        self._state = state
        self._forget = forget
        self._body_timeout = config.settings.limits.body_timeout

    async def answer(
        self, request: web.BaseRequest, context: RequestContext, route: Route, ref: ObjectRef
    ) -> web.StreamResponse:
        """Take the PUT it was admitted for."""
        target = upload_target(route, ref, request.headers.get("Content-Type"))
        if route.settings.delivery == "redirect":
            async with absence_check_slot(self._state, context, target, request.headers):
                return await redirect_put(
                    request, context, self._storage, target, route.settings.ttl, self._clock()
                )
        lease = await self._state.acquire_stream(context.client or "unknown", context.subject_key)
        watch = watch_credential(self._state, self._telemetry, request, context, "upload")
        try:
            received = await receive(request, self._storage, target, self._body_timeout)
        finally:
            if watch is not None:
                self._state.unwatch(watch)
            await self._state.release_stream(lease)
        context.bytes_received = received.size
        context.audit("object.uploaded", bytes=received.size, etag=received.etag)
        self._forget(ref)
        return stored(context.path, received)  # 201 with Location, or 200 for a replacement


def absence_check_slot(
    state: State,
    context: RequestContext,
    target: UploadTarget,
    headers: Mapping[str, str] | None = None,
) -> AbstractAsyncContextManager[object]:
    """The caller's slot for an upload signed without passing through the proxy: its look
    at the key (`overwrite: false`, or the client's own preconditions) is a HEAD made on the
    caller's behalf. Without either, no S3 call is made and no slot is taken."""
    if target.settings.overwrite and not (headers and has_write_preconditions(headers)):
        return contextlib.nullcontext()
    return state.s3_slot(context.client or "unknown", context.subject_key)
