"""Peer: an aiohttp handler that calls aiobotocore get_object and streams the body.

The usual "S3 proxy in aiohttp": one aiobotocore client for the process, get_object, then the
body relayed in 64 KiB chunks. GET /s/KEY -> s3://bench/KEY at --endpoint (path addressing).
Credentials come from the environment (the benchmark passes dummy ones).

    python benchmarks/peers/aiobotocore_proxy.py --port 8082 --endpoint http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import web
from botocore.exceptions import ClientError

CLIENT = web.AppKey("client", object)
CHUNK = 64 * 1024


async def fetch(request: web.Request) -> web.StreamResponse:
    client: Any = request.app[CLIENT]
    try:
        obj = await client.get_object(Bucket="bench", Key=request.match_info["key"])
    except ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status == 404:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response({"error": "storage unavailable"}, status=502)
    body = obj["Body"]
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": obj.get("ContentType") or "application/octet-stream",
                "ETag": obj.get("ETag", ""),
            }
        )
        response.content_length = obj["ContentLength"]
        await response.prepare(request)
        async for chunk in body.iter_chunks(CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        body.close()


def make_app(endpoint: str, pool: int) -> web.Application:
    app = web.Application()

    async def s3_client(app: web.Application) -> AsyncIterator[None]:
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            max_pool_connections=pool,
            response_checksum_validation="when_required",
            request_checksum_calculation="when_required",
        )
        session = get_session()
        async with session.create_client(
            "s3", region_name="us-east-1", endpoint_url=endpoint, config=config
        ) as client:
            app[CLIENT] = client
            yield

    app.cleanup_ctx.append(s3_client)
    app.router.add_get("/s/{key:.+}", fetch)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--endpoint", required=True, help="S3 endpoint, e.g. http://127.0.0.1:9000")
    parser.add_argument("--pool", type=int, default=128, help="max_pool_connections")
    args = parser.parse_args()
    run(make_app(args.endpoint, args.pool), args.port)


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
