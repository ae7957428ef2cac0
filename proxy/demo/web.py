"""The demo's own pages: `/`, sign-in as a demo user, and the numbers for the comparison
panel. Added only by `python -m proxy demo`; `serve` never has them."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from ..app import Gateway, Page
from ..ops import Telemetry, summary

if TYPE_CHECKING:
    from . import Demo

_STATIC = resources.files(__package__) / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def demo_gateway(demo: Demo) -> Gateway:
    """The proxy on the demo's config, with the demo's pages in front of its routes."""
    gateway = Gateway(demo.config)
    gateway.add_pages(
        {
            "/": _static("index.html"),
            "/_demo/app.js": _static("app.js"),
            "/_demo/style.css": _static("style.css"),
            "/_demo/login": _login(demo),
            "/_demo/stats": _stats(demo, gateway.telemetry),
            "/_demo/info": _info(demo),
        }
    )
    return gateway


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


def _stats(demo: Demo, telemetry: Telemetry) -> Page:
    async def stats(request: web.BaseRequest) -> web.Response:
        return web.json_response(
            {"proxy": summary(telemetry.collect()), "s3": demo.s3.snapshot()},
            headers={"Cache-Control": "no-store"},
        )

    return stats


def _info(demo: Demo) -> Page:
    async def info(request: web.BaseRequest) -> web.Response:
        from . import PHOTO_SIZES

        return web.json_response(
            {"photos": len(PHOTO_SIZES), "share_link": demo.share_link},
            headers={"Cache-Control": "no-store"},
        )

    return info
