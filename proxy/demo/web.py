"""The demo's own pages: `/`, sign-in as a demo user, and the numbers for the comparison
panel. Added only by `python -m proxy demo`; `serve` never has them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from ..app import METRICS, create_app

if TYPE_CHECKING:
    from . import Demo

_STATIC = resources.files(__package__) / "static"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def create_demo_app(demo: Demo) -> web.Application:
    def add_routes(app: web.Application) -> None:
        app.router.add_get("/", _page)
        app.router.add_get("/_demo/{name:(app\\.js|style\\.css)}", _static)
        app.router.add_get("/_demo/login", _login(demo))
        app.router.add_get("/_demo/stats", _stats(demo))
        app.router.add_get("/_demo/info", _info(demo))

    return create_app(demo.config, extra_routes=add_routes)


def _asset(name: str) -> web.Response:
    body = (_STATIC / name).read_bytes()
    content_type = _TYPES[name[name.rindex(".") :]]
    return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "no-cache"})


async def _page(request: web.Request) -> web.Response:
    return _asset("index.html")


async def _static(request: web.Request) -> web.Response:
    return _asset(request.match_info["name"])


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _login(demo: Demo) -> Handler:
    async def login(request: web.Request) -> web.Response:
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


def _stats(demo: Demo) -> Handler:
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {"proxy": request.app[METRICS].snapshot(), "s3": demo.s3.snapshot()},
            headers={"Cache-Control": "no-store"},
        )

    return stats


def _info(demo: Demo) -> Handler:
    async def info(request: web.Request) -> web.Response:
        from . import PHOTO_SIZES

        return web.json_response(
            {"photos": len(PHOTO_SIZES), "share_link": demo.share_link},
            headers={"Cache-Control": "no-store"},
        )

    return info
