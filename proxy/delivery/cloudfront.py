"""CloudFront: the client is sent to the distribution's edge with a signed URL (302), or to the
unsigned object URL with signed cookies for the route's `cookie_scope` (302 plus three
Set-Cookies), so the bytes never pass through the proxy and the edge caches them for every
user. No S3 call, no network I/O: signing is CPU work (proxy/cloudfront).

Lifetimes, stable windows, the 302's Cache-Control and Vary, and the JSON answer for fetch()
are redirect.py's, so the two methods cannot drift apart: a URL or cookie set never outlives
the route's ttl (its stable window) or the caller's token. CloudFront keys do not expire, so
nothing else caps them. Stable URLs and cookie sets repeat within their window, and are
remembered (the LinkCache) instead of signed again: an RSA signature costs ~0.3 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..auth import Clock
from ..cloudfront import Signer
from ..config import Route
from ..presign import Lifetime
from ..request import ObjectRef, RequestContext
from .method import Link
from .redirect import LinkCache, SignedLink, link_lifetime, redirect_response, wants_json


class CloudFront:
    """The `cloudfront` method of one config: signs for `signer`'s distribution; cookies get
    `Domain=cookie_domain` when set."""

    def __init__(
        self, signer: Signer, clock: Clock, links: LinkCache, cookie_domain: str | None
    ) -> None:
        self._signer = signer
        self._clock = clock
        self._links = links
        self._cookie_domain = cookie_domain

    async def answer(
        self, request: web.BaseRequest, context: RequestContext, route: Route, ref: ObjectRef
    ) -> web.StreamResponse:
        # HEAD gets the same 302: a canned policy does not name the method.
        link = self.sign(context, route, ref)
        as_json = wants_json(request.headers.get("Accept"))
        extra = {"cookie_scope": link.cookie_scope} if link.cookie_scope else None
        signed = SignedLink(link.url, link.lifetime)
        response = redirect_response(signed, as_json, route.rule.needs_token, extra)
        for value in link.set_cookies:
            response.headers.add("Set-Cookie", value)
        return response

    async def link(self, context: RequestContext, route: Route, ref: ObjectRef, path: str) -> Link:
        signed = self.sign(context, route, ref)
        iso = SignedLink(signed.url, signed.lifetime).expires_at_iso
        return Link(signed.url, iso, signed.cookie_scope, signed.set_cookies)

    def sign(self, context: RequestContext, route: Route, ref: ObjectRef) -> CloudFrontLink:
        """The signed URL, or the unsigned URL and the cookies that open it; either is a
        `url.signed` audit event (what it opens, never the signature)."""
        link = self._sign(context, route, ref)
        stable = route.settings.stable is not None
        if context.audited:  # (its fields cost a strftime call: none when the trail is off)
            context.audit(
                "url.signed",
                route=route.name,
                bucket=ref.bucket,
                key=ref.key,
                url_method="GET",
                expires=SignedLink(link.url, link.lifetime).expires_at_iso,
                **({"cookie_scope": link.cookie_scope} if link.cookie_scope else {}),
                **({"stable": True} if stable else {}),
            )
        return link

    def _sign(self, context: RequestContext, route: Route, ref: ObjectRef) -> CloudFrontLink:
        lifetime = link_lifetime(route.settings, self._clock(), context.expires_at)
        expires = lifetime.expires_at
        url = self._signer.object_url(ref.key)
        scope = route.cookie_scope
        remembered: tuple[object, ...] | None = None
        if route.settings.stable:
            # Everything the answer is a function of, the key that signs it included.
            resource = self._signer.origin + scope.path_for(ref.key) if scope else None
            remembered = (
                "cloudfront",
                self._signer.active.key_id,
                self._signer.active.fingerprint,
                self._signer.hash_name,
                self._cookie_domain,
                url,
                resource,
                expires,
            )
            found = self._links.get(remembered)
            if found is not None:
                return _unpack(found, url, lifetime, resource)
        if scope is None:
            signed = self._signer.signed_url(url, expires)
            link = CloudFrontLink(signed, lifetime)
        else:
            resource = self._signer.origin + scope.path_for(ref.key)
            cookies = self._signer.signed_cookies(resource, expires)
            link = CloudFrontLink(
                url, lifetime, resource, tuple(cookies.set_cookie_headers(self._cookie_domain))
            )
        if remembered is not None:
            self._links.put(remembered, _pack(link))
        return link


@dataclass(frozen=True, slots=True)
class CloudFrontLink:
    """A signed URL, or an unsigned one with the Set-Cookie values that open it."""

    url: str
    lifetime: Lifetime
    cookie_scope: str | None = None  # the Resource the cookies cover
    set_cookies: tuple[str, ...] = ()


# The LinkCache holds strings: a cookie set is remembered as its Set-Cookie values, one a line.
def _pack(link: CloudFrontLink) -> str:
    return "\n".join(link.set_cookies) if link.cookie_scope else link.url


def _unpack(found: str, url: str, lifetime: Lifetime, resource: str | None) -> CloudFrontLink:
    if resource is None:
        return CloudFrontLink(found, lifetime)
    return CloudFrontLink(url, lifetime, resource, tuple(found.split("\n")))
