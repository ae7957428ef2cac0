"""GET and HEAD of an authorized object: choose how it is delivered (a route's `delivery`, or
for `auto` by its size from the metadata cache or a HEAD), then hand it to that method
(proxy/delivery). Owns the caches of what S3 answered (metadata, small objects, signed links).

Runs only after access.py admitted the request: every S3 call here is for an object the
caller may read.
"""

from __future__ import annotations

from aiohttp import web

from ..auth import Clock
from ..config import Config, Route
from ..delivery import CloudFront, LinkCache, Method, Redirect, Stream
from ..errors import NotFound
from ..metacache import MISSING, MetadataCache
from ..objectcache import ObjectCache
from ..ops import Telemetry
from ..request import ObjectRef, RequestContext
from ..state import State
from ..storage import Storage


class Downloads:
    """One config's downloads. `previous`: the Downloads this one replaces on a reload; its
    caches are kept when their settings did not change. None of them depends on a route's
    rules (they are keyed by the object as S3 sees it, or by everything a URL is a function
    of), so a route whose rules changed is answered by its new rules at once."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        clock: Clock,
        state: State,
        telemetry: Telemetry,
        previous: Downloads | None = None,
    ) -> None:
        settings = self._settings = config.settings
        self._storage = storage
        self._clock = clock
        self._state = state
        same_metadata = (
            previous
            if previous and previous._settings.metadata_cache == (settings.metadata_cache)
            else None
        )
        self.metadata: MetadataCache = (
            same_metadata.metadata
            if same_metadata
            else MetadataCache(
                settings.metadata_cache.max_entries,
                settings.metadata_cache.ttl,
                settings.metadata_cache.negative_ttl,
                clock,
            )
        )
        self.links: LinkCache = previous.links if previous is not None else LinkCache()
        # No route serves an entry older than the largest max_age: past it, it is garbage.
        longest = max(
            (route.settings.cache.max_age for route in config.routes if route.settings.cache),
            default=0.0,
        )
        kept_objects = (
            previous.objects
            if previous is not None
            and previous._settings.object_cache == settings.object_cache
            and previous.objects.max_age == longest
            else None
        )
        self.objects: ObjectCache = kept_objects or ObjectCache(
            settings.object_cache.max_bytes, settings.object_cache.max_entries, longest, clock
        )
        # The methods, by the name a route's `delivery` (or `auto`'s choice) gives.
        self._methods: dict[str, Method] = {
            "stream": Stream(
                storage, self.objects, state, settings.limits.client_write_timeout, telemetry
            ),
            "redirect": Redirect(storage, clock, self.links, settings.s3.redirect_cache_control),
        }
        if config.cloudfront is not None and settings.cloudfront is not None:
            self._methods["cloudfront"] = CloudFront(
                config.cloudfront, clock, self.links, settings.cloudfront.cookie_domain
            )
        telemetry.watch_cache("object", self.objects)
        telemetry.watch_cache("metadata", self.metadata)
        telemetry.watch_cache("link", self.links)

    async def answer(
        self, request: web.BaseRequest, context: RequestContext, route: Route, ref: ObjectRef
    ) -> web.StreamResponse:
        """Deliver the object a GET or HEAD was admitted for."""
        delivery: str = route.settings.delivery
        if delivery == "auto":  # (only `auto` has anything to wait for in choosing)
            delivery = await self.choose_delivery(route, ref, context)
            context.delivery = f"auto:{delivery}"
        return await self._methods[delivery].answer(request, context, route, ref)

    async def choose_delivery(self, route: Route, ref: ObjectRef, context: RequestContext) -> str:
        """The method's name: the route's, or for `auto` by the object's size. A HEAD made
        for it holds one of the caller's slots (limits.max_streams_per_*): with a slow S3,
        one caller's lookups cannot take the pool from the others."""
        settings = route.settings
        if settings.delivery != "auto":
            return settings.delivery
        meta = self.metadata.get(ref)
        if meta is MISSING:
            raise NotFound("no such key (a recent HEAD said so)")
        if meta is None:
            try:
                async with self._state.s3_slot(context.client or "unknown", context.subject_key):
                    meta = await self._storage.head(ref)
            except NotFound:
                self.metadata.put_missing(ref)
                raise
            self.metadata.put(ref, meta)
        return "stream" if meta.content_length < settings.stream_below else "redirect"

    def method(self, name: str) -> Method:
        """The method `choose_delivery` named."""
        return self._methods[name]

    def forget(self, ref: ObjectRef) -> None:
        """The object changed (this process stored it): what the caches hold of it is stale."""
        self.metadata.forget(ref)
        self.objects.forget(ref)
