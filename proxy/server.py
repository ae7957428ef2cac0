"""Runs the app as a server process: bind, handle signals, reload, shut down gracefully.

On SIGTERM or SIGINT the gateway is marked draining (readiness probes fail) and keeps serving
for `listen.drain_delay` seconds, so that load balancers stop sending before the port closes;
a second signal cuts that delay short. From the signal on, every response says `Connection:
close`. Then the listening socket closes (new connections are refused), in-flight responses get
up to `listen.shutdown_grace` seconds to finish *and* to flush what is still buffered for their
clients, then everything left is closed and the process exits 0. (aiohttp's own shutdown waits
for handlers but not for their buffered bytes.)

A request that reaches an open connection during all this is answered, never dropped: open
connections keep being read until the work is done and they have been quiet for `_LAST_CALL`
seconds (within the grace). aiohttp's `pre_shutdown()` would instead stop reading them at once,
so a request already on its way over a kept-alive connection met silence, then a closed socket.

On SIGHUP the config file is reloaded (see reload.py), and an audit file that logrotate moved
is followed into a new one (audit/trail.py); with workers, the supervisor passes the signal on
to each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from aiohttp import web

from .app import Gateway
from .audit import enter_worker as enter_audit_worker
from .config import Config, ConfigError, load_config
from .edge import EdgeServer, raise_open_file_limit
from .logs import BatchingStreamHandler, flush_logs
from .ops import (
    MetricsListener,
    enter_worker,
    render_directory,
    shared_directory,
    worker_exited,
)
from .reload import reload_gateway, remove_pid_file, write_pid_file

_POLL = 0.05
_LINGER = 2.0
# Seconds of quiet (nothing in flight, nothing buffered) after the port closes before open
# connections are closed: a client that sent on a kept-alive connection just before learning
# of the shutdown gets its answer. Longer only delays the exit of an idle server.
_LAST_CALL = 1.0
log = logging.getLogger("proxy.server")


async def serve(
    config: Config,
    host: str,
    port: int,
    on_ready: Callable[[int], None],
    gateway: Gateway | None = None,
    reuse_port: bool = False,
    config_path: Path | None = None,
    metrics_listener: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT; reload `config_path` on SIGHUP. `metrics_listener`: serve
    `metrics.listen` from this process (a worker of several does not: its supervisor does, for
    all of them)."""
    soft, hard = raise_open_file_limit()
    # Every connection holds a descriptor; this bounds how many the process can hold at once.
    log.info("open file limit: %d (hard limit %d)", soft, hard)
    if gateway is None:
        gateway = Gateway(config)
    await gateway.open()
    try:
        render = gateway.telemetry.render
        listener = start_metrics_listener(config, render) if metrics_listener else None
        try:
            await _serve_until_signal(
                gateway, config, host, port, on_ready, reuse_port, config_path
            )
        finally:
            if listener is not None:
                listener.stop()
    finally:
        await gateway.close()


def start_metrics_listener(config: Config, render: Callable[[], bytes]) -> MetricsListener | None:
    """Metrics on their own address when so configured; an OSError naming metrics.listen if
    that address cannot be had."""
    metrics = config.settings.metrics
    address = metrics.address if metrics.enabled else None
    if address is None:
        return None
    listener = MetricsListener(address[0], address[1], metrics.path, render)
    try:
        bound = listener.start()
    except OSError as exc:
        raise OSError(exc.errno, f"metrics.listen {metrics.listen}: {exc.strerror}") from None
    log.info("metrics on http://%s:%d%s", metrics.listen.rpartition(":")[0], bound, metrics.path)
    return listener


async def _serve_until_signal(
    gateway: Gateway,
    config: Config,
    host: str,
    port: int,
    on_ready: Callable[[int], None],
    reuse_port: bool,
    config_path: Path | None,
) -> None:
    edge = low_level_server(gateway, config)
    runner = web.ServerRunner(edge, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    on_ready(bound)

    stop = asyncio.Event()
    hurry = asyncio.Event()  # a second signal: skip the rest of the drain delay

    def on_stop() -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    def on_hangup() -> None:
        gateway.reopen_audit()  # logrotate moved the audit file: go on in a new one
        if config_path is None:
            log.warning("SIGHUP ignored: this server was not started from a config file")
        else:
            reload_gateway(gateway, config_path)

    loop = asyncio.get_running_loop()
    flusher = asyncio.ensure_future(_flush_logs_every(BatchingStreamHandler.interval))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    # run() holds SIGHUP back until now, so that an early one is not fatal: deliver it.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    try:
        await stop.wait()
        # Read now: a reload may have changed them.
        listen = gateway.config.settings.listen
        gateway.draining = True
        edge.closing = True  # every response from now on says Connection: close
        if listen.drain_delay > 0:
            log.info(
                "draining: serving on for %g s (listen.drain_delay) before closing the port",
                listen.drain_delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hurry.wait(), listen.drain_delay)
        grace = listen.shutdown_grace
        await site.stop()  # refuse new connections
        deadline = loop.time() + grace
        log.info(
            "port closed; answering %d open connection(s) until done (listen.shutdown_grace: "
            "%g s at most)",
            len(edge.connections),
            grace,
        )
        # Buffered bytes and quiet have no completion event to await, hence polling.
        quiet_since = loop.time()
        while (now := loop.time()) < deadline and edge.connections:
            if _busy(gateway, edge):
                quiet_since = now
            elif now - quiet_since >= _LAST_CALL:
                break
            await asyncio.sleep(_POLL)
        runner._shutdown_timeout = max(0.1, deadline - loop.time())
    finally:
        # From here on a SIGHUP waits (and is dropped at exit) rather than killing the process.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        try:
            await runner.cleanup()
        finally:
            flusher.cancel()
            flush_logs()


async def _flush_logs_every(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        flush_logs()


def low_level_server(gateway: Gateway, config: Config) -> EdgeServer:
    return EdgeServer(
        gateway,
        config.settings.limits,
        config.settings.listen,
        access_log=None,  # the proxy writes its own JSON access log
        handler_cancellation=False,  # a handler always finishes and logs its request
        # After an answer that left a request body unread (a 408, a 413), the rest of the body
        # is read off for this long so the client sees the answer, not a reset; then the
        # connection closes. aiohttp's 10 s would let stalled bodies hold descriptors longer.
        lingering_time=_LINGER,
    )


def _busy(gateway: Gateway, server: web.Server) -> bool:
    if gateway.in_flight:
        return True
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
    gateway_factory: Callable[[], Gateway] | None = None,
    config_path: Path | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, in `listen.workers` processes; uvloop when installed.
    SIGHUP reloads `config_path`. Raises PidFileError if `listen.pid_file` cannot be written."""
    listen = config.settings.listen
    # Until a handler is in place, SIGHUP's default action would end the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    pid_file = listen.pid_file
    try:
        if listen.workers == 1:

            def ready(bound: int) -> None:
                if pid_file is not None:  # only once the port is ours
                    write_pid_file(pid_file)
                on_ready(bound)

            _run_worker(config, host, port, ready, gateway_factory, False, config_path)
        else:
            _supervise(config, host, port, on_ready, gateway_factory, listen.workers, config_path)
    finally:
        if pid_file is not None:
            remove_pid_file(pid_file)


def _run_worker(
    config: Config,
    host: str,
    port: int,
    on_ready: Callable[[int], None],
    gateway_factory: Callable[[], Gateway] | None,
    reuse_port: bool,
    config_path: Path | None,
) -> None:
    async def main() -> None:
        gateway = gateway_factory() if gateway_factory else None
        # A worker of several (reuse_port) leaves metrics.listen to its supervisor.
        await serve(config, host, port, on_ready, gateway, reuse_port, config_path, not reuse_port)

    # Decided outside any `except` block, so that no later traceback carries the ImportError.
    uvloop = _uvloop()
    if uvloop is None:
        asyncio.run(main())
    else:
        uvloop.run(main())


def _uvloop() -> ModuleType | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def _worker_main(
    config: Config,
    host: str,
    port: int,
    on_ready: Callable[[int], None],
    gateway_factory: Callable[[], Gateway] | None,
    number: int,
    config_path: Path | None,
) -> int:
    """Run one worker; return its exit code, logging why it failed."""
    try:
        ready = on_ready if number == 0 else (lambda bound: None)
        _run_worker(config, host, port, ready, gateway_factory, True, config_path)
    except BaseException:
        log.exception("worker %d failed", number)
        return 1
    finally:
        flush_logs()
    return 0


def _die_with_parent() -> None:
    """Linux: if the supervisor is killed outright (SIGKILL), its workers get SIGTERM."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _supervise(
    config: Config,
    host: str,
    port: int,
    on_ready: Callable[[int], None],
    gateway_factory: Callable[[], Gateway] | None,
    workers: int,
    config_path: Path | None,
) -> None:
    """Fork `workers` processes that share one port through SO_REUSEPORT (the kernel spreads
    connections across them); forward SIGTERM/SIGINT/SIGHUP to them, restart any that crash,
    and return once all have exited after a signal. With metrics on, the workers write their
    numbers to one private directory and this process serves metrics.listen from it."""
    if not config.settings.metrics.enabled:
        _supervise_workers(
            config, host, port, on_ready, gateway_factory, workers, config_path, None
        )
        return
    with shared_directory() as directory:
        _supervise_workers(
            config, host, port, on_ready, gateway_factory, workers, config_path, directory
        )


def _supervise_workers(
    config: Config,
    host: str,
    port: int,
    on_ready: Callable[[int], None],
    gateway_factory: Callable[[], Gateway] | None,
    workers: int,
    config_path: Path | None,
    metrics_directory: str | None,
) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        # SO_REUSEPORT would let a second proxy share the port silently: make sure it is free.
        with socket.socket(family) as probe:
            probe.bind((host, port))
    # Hold the port (bound, not listening) so that port 0 means one port for all workers.
    holder = socket.socket(family)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, port))
    port = holder.getsockname()[1]
    pid_file = config.settings.listen.pid_file
    if pid_file is not None:  # the supervisor's pid: it passes SIGHUP on to every worker
        write_pid_file(pid_file)
    listener = None
    if metrics_directory is not None:
        try:
            listener = start_metrics_listener(config, lambda: render_directory(metrics_directory))
        except BaseException:
            holder.close()
            raise
    stopping = False
    children: dict[int, int] = {}  # pid -> worker number
    crashes: list[float] = []
    stops = {signal.SIGTERM, signal.SIGINT}
    signals = stops | {signal.SIGHUP}

    def spawn(number: int) -> None:
        # Signals wait until the child is recorded (or, in the child, reset to default).
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            pid = os.fork()
            if pid == 0:  # the worker
                holder.close()
                if listener is not None:
                    listener.close_in_child()
                if metrics_directory is not None:
                    enter_worker(metrics_directory)
                enter_audit_worker(number)  # its audit trail is a file of its own
                _die_with_parent()
                for sig in signals:
                    signal.signal(sig, signal.SIG_DFL)
                # SIGHUP stays blocked until the worker's loop handles it (see serve()).
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
                os._exit(
                    _worker_main(config, host, port, on_ready, gateway_factory, number, config_path)
                )
            children[pid] = number
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def hangup(signum: int, frame: object) -> None:
        nonlocal config
        if config_path is not None:
            # For workers started from now on; each running worker reloads (and logs) itself.
            with contextlib.suppress(ConfigError):
                config = load_config(config_path)
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    exit_code = 0
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, hangup)
    for first in range(workers):
        spawn(first)
    try:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            crashed = children.pop(pid) if pid in children else None
            if metrics_directory is not None:
                worker_exited(metrics_directory, pid)
            if crashed is None or stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            now = time.monotonic()
            crashes[:] = [t for t in crashes if now - t < 30] + [now]
            if len(crashes) > 2 * workers:
                log.error("workers keep exiting (last code %d); stopping", code)
                forward(signal.SIGTERM, None)
                exit_code = 1
                continue
            log.warning("worker %d exited (code %d); starting a new one", crashed, code)
            time.sleep(0.5)  # do not spin if workers die at once
            if not stopping:  # a signal may have come during the pause
                spawn(crashed)
    finally:
        holder.close()
        if listener is not None:
            listener.stop()
    if exit_code:
        raise SystemExit(exit_code)
