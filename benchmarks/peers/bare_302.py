"""Peer: the framework floor. An aiohttp handler that answers 302 with a fixed Location,
no authentication, no signing. GET /r/KEY -> 302.

    python benchmarks/peers/bare_302.py --port 8083
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

LOCATION = "http://127.0.0.1:9/bench/object?X-Amz-Signature=fixed"


async def redirect(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": LOCATION})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/r/{key:.+}", redirect)
    run(app, args.port)


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
