"""Peer: the "backend endpoint" method as usually written.

An aiohttp handler fetches the object from the backend with aiohttp, reads the whole body into
memory, then returns it. GET /s/KEY -> BACKEND/bench/KEY.

    python benchmarks/peers/naive_proxy.py --port 8081 --backend http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

BACKEND = web.AppKey("backend", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def fetch(request: web.Request) -> web.Response:
    url = f"{request.app[BACKEND]}/bench/{request.match_info['key']}"
    async with request.app[SESSION].get(url) as upstream:
        body = await upstream.read()
        return web.Response(body=body, status=upstream.status, content_type=upstream.content_type)


def make_app(backend: str, pool: int) -> web.Application:
    app = web.Application()
    app[BACKEND] = backend.rstrip("/")

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=pool)
        async with aiohttp.ClientSession(connector=connector) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(client_session)
    app.router.add_get("/s/{key:.+}", fetch)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="e.g. http://127.0.0.1:9000")
    parser.add_argument("--pool", type=int, default=128, help="connections to the backend")
    args = parser.parse_args()
    run(make_app(args.backend, args.pool), args.port)


def run(app: web.Application, port: int) -> None:
    """Serve on 127.0.0.1 without an access log, on uvloop when installed (as the proxy does)."""
    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
