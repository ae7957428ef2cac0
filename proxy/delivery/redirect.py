"""Redirecting: the client is sent to a presigned S3 URL (302, or its JSON for fetch()), so
the bytes never pass through the proxy. Stable URLs (a route's `stable` window) repeat, and
are remembered instead of signed again (LinkCache). No S3 call: signing is CPU work.

Each URL handed out is a `url.signed` audit event. A one-off URL carries its request's id
(`x-request-id`, signed), which S3 writes to its server access log; a stable URL carries none:
it is the same URL for every caller in its window (across replicas too), so no one request's
id could be in it, and a per-request id would end the sameness browsers cache by.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import NamedTuple

from aiohttp import web

from ..auth import Clock
from ..config import Route, RouteSettings
from ..cors import add_headers
from ..errors import Unauthenticated, UpstreamError
from ..presign import Lifetime, LifetimeError, plan_lifetime
from ..request import ObjectRef, RequestContext
from ..storage import Storage
from ..wire import WireHead, WireResponse
from .method import Link
from .presentation import signed_overrides


class Redirect:
    """The `redirect` method of one config: URLs presigned with `storage`'s credentials,
    stable ones remembered in `links`. `cache_control` (s3.redirect_cache_control) is signed
    into every URL whose route sets none."""

    def __init__(
        self, storage: Storage, clock: Clock, links: LinkCache, cache_control: str | None
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._links = links
        self._cache_control = cache_control
        # (route name, key) -> the response headers signed into its URLs, and the same as
        # LinkCache keys hold them: a function of this config's route and the key only, so
        # computed once per hot key, not per request.
        self._overrides: dict[tuple[str, str], tuple[Mapping[str, str], _Items]] = {}

    async def answer(
        self, request: web.BaseRequest, context: RequestContext, route: Route, ref: ObjectRef
    ) -> web.StreamResponse:
        as_json = wants_json(request.headers.get("Accept"))
        # The JSON answer names a URL for fetch() to GET; HEAD gets the same answer, so a
        # HEAD's headers (Content-Length included) match its GET's.
        method = "GET" if as_json else request.method
        link = await self.sign(context, route, ref, method)
        return redirect_response(link, as_json, route.rule.needs_token, cors=context.cors)

    async def link(self, context: RequestContext, route: Route, ref: ObjectRef, path: str) -> Link:
        signed = await self.sign(context, route, ref, "GET")
        return Link(signed.url, signed.expires_at_iso)

    async def sign(
        self, context: RequestContext, route: Route, ref: ObjectRef, method: str
    ) -> SignedLink:
        """A presigned URL for the object, shown as the route shows it, that outlives
        neither the route's ttl nor the caller's credential."""
        stable = route.settings.stable is not None
        overrides, items = self._signed_overrides(route, ref.key)
        link = await sign_link(
            self._storage,
            route.settings,
            method,
            ref,
            overrides,
            self._clock(),
            context.expires_at,
            self._links,
            None if stable else context.id,
            items,
        )
        if context.audited:  # (its fields cost two strftime calls: none when the trail is off)
            context.audit(
                "url.signed",
                route=route.name,
                bucket=ref.bucket,
                key=ref.key,
                url_method=method,
                expires=link.expires_at_iso,
                **({"stable": True, "signed_at": _iso(link.lifetime.signed_at)} if stable else {}),
            )
        return link

    def _signed_overrides(self, route: Route, key: str) -> tuple[Mapping[str, str], _Items]:
        remembered = self._overrides.get((route.name, key))
        if remembered is not None:
            return remembered
        overrides = signed_overrides(route, key)
        if self._cache_control is not None:
            # Else S3's answer for a private file would be storable by shared caches.
            overrides.setdefault("Cache-Control", self._cache_control)
        if len(self._overrides) >= _OVERRIDES_KEPT:
            self._overrides.clear()  # bounded: many distinct keys only cost a recompute
        pair = (overrides, _items(overrides))
        self._overrides[(route.name, key)] = pair
        return pair


_OVERRIDES_KEPT = 4096
_Items = tuple[tuple[str, str], ...]


def _items(overrides: Mapping[str, str] | None) -> _Items:
    """Overrides as a LinkCache key holds them: sorted, so that their order does not count."""
    return tuple(sorted((overrides or {}).items()))


class SignedLink(NamedTuple):
    """A signed URL and its lifetime. (A tuple: one per redirect, cheaper to build than a
    frozen dataclass.)"""

    url: str
    lifetime: Lifetime

    @property
    def expires_at_iso(self) -> str:
        return _iso(self.lifetime.expires_at)


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LinkCache:
    """Stable URLs repeat within their window: remember them (bounded LRU) instead of
    signing again. Keyed by everything the URL is a function of."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        # Oldest first: a stable URL is re-signed at its window's end anyway, so reordering
        # on every hit (an LRU) would buy little.
        self._urls: dict[tuple[object, ...], str] = {}
        self.hits = 0  # lookups answered and not (read by the metrics)
        self.misses = 0

    def get(self, key: tuple[object, ...]) -> str | None:
        url = self._urls.get(key)
        if url is None:
            self.misses += 1
        else:
            self.hits += 1
        return url

    def put(self, key: tuple[object, ...], url: str) -> None:
        self._urls[key] = url
        if len(self._urls) > self._size:
            del self._urls[next(iter(self._urls))]


async def sign_link(
    storage: Storage,
    settings: RouteSettings,
    method: str,
    ref: ObjectRef,
    overrides: Mapping[str, str],
    now: float,
    token_expires_at: float | None,
    cache: LinkCache | None = None,
    request_id: str | None = None,
    override_items: _Items | None = None,
) -> SignedLink:
    """`request_id`: signed into the URL (never into a stable, cached one: Redirect.sign).
    `override_items`: `overrides` as `_items` gives them, when the caller remembers them."""
    credentials = await storage.credentials()
    lifetime = link_lifetime(settings, now, token_expires_at, credentials.expires_at)
    # A presigned HEAD URL cannot carry response overrides; they only make sense for GET.
    signed_overrides = overrides if method == "GET" else None
    cache_key: tuple[object, ...] | None = None
    if cache is not None and settings.stable:
        cache_key = (
            credentials.access_key,
            credentials.token,
            method,
            ref,
            (override_items if override_items is not None else _items(overrides))
            if signed_overrides is not None
            else (),
            lifetime.signed_at,
            lifetime.expires_in,
        )
        url = cache.get(cache_key)
        if url is not None:
            return SignedLink(url, lifetime)
    url = storage.presign(credentials, method, ref, lifetime, signed_overrides, request_id)
    if cache is not None and cache_key is not None:
        cache.put(cache_key, url)
    return SignedLink(url, lifetime)


def link_lifetime(
    settings: RouteSettings,
    now: float,
    token_expires_at: float | None,
    credentials_expire_at: float | None = None,
) -> Lifetime:
    """When a link signed now for a route is signed and expires (its `ttl`, its `stable`
    window), never outliving the caller's token or the signing credentials; the refusal
    when no link could still be used. Every method that signs links plans them here."""
    try:
        return plan_lifetime(
            now, settings.ttl, settings.stable, token_expires_at, credentials_expire_at
        )
    except LifetimeError as exc:
        if exc.limit == "token":
            raise Unauthenticated("token expires before a link could be used") from None
        raise UpstreamError("AWS credentials expired; cannot sign") from None


def wants_json(accept: str | None) -> bool:
    """True when the client explicitly accepts application/json (q > 0), as fetch()/XHR do."""
    if not accept or "json" not in accept:
        return False
    for media_range in accept.split(","):
        media, *params = (part.strip() for part in media_range.split(";"))
        if media.lower() == "application/json":
            return not any(_is_zero_quality(param) for param in params)
    return False


def _is_zero_quality(param: str) -> bool:
    """`q=0` in any spelling (`Q=0.000`, `q = 0.`): the client refuses that type."""
    name, _, value = param.replace(" ", "").partition("=")
    try:
        return name.lower() == "q" and float(value) == 0
    except ValueError:
        return False


def redirect_response(
    link: SignedLink,
    as_json: bool,
    per_caller: bool,
    extra: Mapping[str, str] | None = None,
    cors: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """The 302 to `link` (or its JSON, with `extra` fields beside url and expires_at), cached
    by the browser for as long as a stable URL stays good. `cors`: the request's CORS
    headers, written into the 302's head (else the Gateway adds them)."""
    max_age = link.lifetime.max_age
    if not as_json:
        return WireResponse(302, _redirect_head(link.url, max_age, per_caller, cors), 0)
    headers = _redirect_fields(max_age, per_caller)
    body = json.dumps({"url": link.url, "expires_at": link.expires_at_iso, **(extra or {})})
    headers["X-Content-Type-Options"] = "nosniff"
    return web.Response(status=200, text=body, content_type="application/json", headers=headers)


def _redirect_fields(max_age: int, per_caller: bool) -> dict[str, str]:
    # A stable URL may be cached for as long as it stays valid (less a margin); a one-off
    # URL must not be, or a later page view would reuse a dead link.
    cache = f"private, max-age={max_age}" if max_age > 0 else "no-store"
    # When the answer depends on who asks, a browser shared by two people must not hand one
    # of them the other's cached redirect.
    vary = "Accept, Authorization, Cookie" if per_caller else "Accept"
    return {"Cache-Control": cache, "Vary": vary, "Referrer-Policy": "no-referrer"}


def _redirect_head(
    url: str, max_age: int, per_caller: bool, cors: Mapping[str, str] | None
) -> WireHead:
    """The 302's head, serialized once per stable URL and max-age (a stable URL repeats for
    every caller within its window, its max-age within each second); a one-off URL's, and
    one with CORS headers, each time."""
    kept = max_age > 0 and not cors
    if kept:
        head = _HEADS.get((url, max_age, per_caller))
        if head is not None:
            return head
    fields = {"Location": url, **_redirect_fields(max_age, per_caller)}
    if cors:
        add_headers(fields, cors)
    head = WireHead(fields, cors or None)
    if kept:
        if len(_HEADS) >= _HEADS_KEPT:
            _HEADS.clear()  # bounded: many distinct URLs only cost a rebuild
        _HEADS[(url, max_age, per_caller)] = head
    return head


# (stable URL, max-age, per caller) -> the 302's head: a function of these only, so shared.
_HEADS: dict[tuple[str, int, bool], WireHead] = {}
_HEADS_KEPT = 4096
