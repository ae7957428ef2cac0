"""The demo's own pages: `/`, sign-in as a demo user, and the numbers for the comparison
panel. Added only by `python -m proxy demo`; `serve` never has them.

The page says what one view cost by reading the numbers before and after its images load.
Those numbers are counted where the traffic happens (the proxy's metrics, the demo's S3),
never guessed in the browser, whose Resource Timing hides the sizes of S3's cross-origin
answers. `/_demo/stats?settled` first waits until every answer the proxy has begun is
counted: a browser can finish reading a streamed image before its handler returns.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from ..app import Gateway, Page
from ..ops import summary

if TYPE_CHECKING:
    from . import Demo

_STATIC = resources.files(__package__) / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
SETTLE_TIMEOUT = 5.0  # seconds `?settled` waits for answers in progress, then says it did not


class DemoGateway(Gateway):
    """The proxy on the demo's config, with the demo's pages in front of its routes, knowing
    when no answer to a route is in progress (and so every answer so far is counted)."""

    def __init__(self, demo: Demo) -> None:
        super().__init__(demo.config)
        self._answering = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._own = {
            "/": _static("index.html"),
            "/_demo/app.js": _static("app.js"),
            "/_demo/multipart.js": _static("multipart.js"),
            "/_demo/style.css": _static("style.css"),
            "/_demo/login": _login(demo),
            "/_demo/stats": _stats(demo, self),
            "/_demo/info": _info(demo),
        }
        self.add_pages(self._own)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.raw_path.split("?", 1)[0] in self._own:
            return await super().__call__(request)
        self._answering += 1
        self._idle.clear()
        try:
            # Gateway.__call__ counts the request before it returns.
            return await super().__call__(request)
        finally:
            self._answering -= 1
            if not self._answering:
                self._idle.set()

    async def settled(self) -> None:
        """Return once no answer to a route is in progress."""
        await self._idle.wait()


def demo_gateway(demo: Demo) -> Gateway:
    return DemoGateway(demo)


def _asset(name: str) -> web.Response:
    body = (_STATIC / name).read_bytes()
    content_type = _TYPES[name[name.rindex(".") :]]
    return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "no-cache"})


def _static(name: str) -> Page:
    async def static(request: web.BaseRequest) -> web.Response:
        return _asset(name)

    return static


def _login(demo: Demo) -> Page:
    async def login(request: web.BaseRequest) -> web.Response:
        role = request.query.get("as", "anonymous")
        response = web.Response(status=302, headers={"Location": "/"})
        if role in demo.tokens:
            # What a web app does after sign-in so that <img> tags carry the token. (Add
            # Secure in production; the demo runs on plain http://127.0.0.1.)
            response.set_cookie(
                "access_token",
                demo.tokens[role],
                httponly=True,
                samesite="Lax",
                path="/",
                max_age=3600,
            )
            response.set_cookie("demo_role", role, samesite="Lax", path="/", max_age=3600)
        else:
            response.del_cookie("access_token", path="/")
            response.del_cookie("demo_role", path="/")
        return response

    return login


def _stats(demo: Demo, gateway: DemoGateway) -> Page:
    async def stats(request: web.BaseRequest) -> web.Response:
        settled = True
        if "settled" in request.query:
            try:
                async with asyncio.timeout(SETTLE_TIMEOUT):
                    await gateway.settled()
            except TimeoutError:
                settled = False  # a long download, maybe: the page says its numbers may be short
        return web.json_response(
            {
                "proxy": summary(gateway.telemetry.collect()),
                "s3": demo.s3.snapshot(),
                "edge": dict(demo.edge.thread.edge.counts) if demo.edge else {},
                "settled": settled,
            },
            headers={"Cache-Control": "no-store"},
        )

    return stats


def _info(demo: Demo) -> Page:
    async def info(request: web.BaseRequest) -> web.Response:
        from . import PHOTO_SIZES

        return web.json_response(
            {
                "photos": len(PHOTO_SIZES),
                "share_link": demo.share_link,
                "edge": demo.edge.origin if demo.edge else None,
            },
            headers={"Cache-Control": "no-store"},
        )

    return info
