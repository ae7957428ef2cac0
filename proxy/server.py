"""Runs the app as a server process: bind, handle signals, shut down gracefully.

On SIGTERM or SIGINT the listening socket closes first (new connections are refused), then
in-flight responses get up to `listen.shutdown_grace` seconds to finish *and* to flush what is
still buffered for their clients, then everything left is closed and the process exits 0.
(aiohttp's own shutdown waits for handlers but not for their buffered bytes.)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

from aiohttp import web

from .app import IN_FLIGHT, create_app
from .config import Config

_POLL = 0.05


async def serve(
    config: Config,
    host: str,
    port: int,
    on_ready: Callable[[int], None],
    app: web.Application | None = None,
) -> None:
    limits = config.settings.limits
    grace = config.settings.listen.shutdown_grace
    if app is None:
        app = create_app(config)
    runner = web.AppRunner(
        app,
        access_log=None,  # the proxy writes its own JSON access log
        handle_signals=False,
        max_line_size=limits.max_header_bytes,
        max_field_size=limits.max_header_bytes,
        max_headers=limits.max_headers,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    on_ready(bound)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        await site.stop()  # refuse new connections; open ones carry on
        deadline = loop.time() + grace
        # Buffered bytes have no completion event to await, hence polling.
        while loop.time() < deadline and _busy(app, runner):  # noqa: ASYNC110
            await asyncio.sleep(_POLL)
        runner._shutdown_timeout = max(0.1, deadline - loop.time())
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await runner.cleanup()


def _busy(app: web.Application, runner: web.AppRunner) -> bool:
    if app[IN_FLIGHT].count:
        return True
    server = runner.server
    if server is None:
        return False
    for connection in server.connections:
        transport = connection.transport
        if transport is not None and transport.get_write_buffer_size() > 0:
            return True
    return False


def run(
    config: Config,
    host: str,
    port: int,
    on_ready: Callable[[int], None],
    app_factory: Callable[[], web.Application] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; uvloop is used when it is installed."""

    async def main() -> None:
        await serve(config, host, port, on_ready, app_factory() if app_factory else None)

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
