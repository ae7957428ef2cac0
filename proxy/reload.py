"""Live reload of config.yaml in a running server, and the pid file that lets `python -m proxy
reload` find that server. Never exits the process or closes a connection.

Rules:
1. The new config is validated in full (load_config, then building its handler) before
   anything changes; if either fails, the old config keeps serving and the log says why, key
   path first.
2. New requests get the new config; requests in flight finish on the one they started with.
3. Settings read only at start-up (the port, the worker count, the S3 connection pool, the
   connection limits of the edge) keep their old value, and each changed one is named in a
   warning: never silently ignored.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
from pathlib import Path
from typing import Any

from .app import Gateway
from .config import ConfigError, S3Settings, Settings, StateSettings, load_config

log = logging.getLogger("proxy.reload")

OK, INVALID, ERROR = "ok", "invalid", "error"

# Key paths whose new value a reload cannot apply, and why.
RESTART_ONLY: tuple[str, ...] = (
    "listen.host",  # the socket is bound once
    "listen.port",
    "listen.workers",  # the supervisor forks them once
    "listen.pid_file",
    # Who the client is is decided by the edge, built once with the server.
    "listen.trusted_proxies",
    "listen.forwarded_header",
    "listen.proxy_protocol",
    # The S3 client and its connection pool live as long as the process; only
    # redirect_cache_control is read per request.
    *(f"s3.{name}" for name in S3Settings.model_fields if name != "redirect_cache_control"),
    "auth.jwks.timeout",  # the JWKS HTTP session is opened once
    # The metrics listener (its own address, or none) is started with the server.
    "metrics.enabled",
    "metrics.listen",
    "metrics.path",
    # The edge (parser limits, timers, per-client counts) is built with the server.
    "limits.max_header_bytes",
    "limits.max_headers",
    "limits.max_target_length",
    "limits.header_timeout",
    "limits.keepalive_timeout",
    "limits.max_connections_per_client",
    # The state backend (a Redis pool and its poller) is opened once with the Gateway; a
    # reload retunes it (when_down, limits, lifetimes) but never swaps it.
    *(f"state.{name}" for name in StateSettings.model_fields if name != "when_down"),
    # The audit file is opened once per process (SIGHUP reopens it where logrotate moved it).
    "audit.path",
    "audit.max_bytes",
)


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """The RESTART_ONLY key paths whose value differs between the two settings."""
    return [path for path in RESTART_ONLY if _value(old, path) != _value(new, path)]


def _value(settings: Settings, path: str) -> Any:
    node: Any = settings
    for part in path.split("."):
        node = getattr(node, part)
    return node


def reload_gateway(gateway: Gateway, path: Path) -> str:
    """Load `path` and, if it is valid, serve new requests with it. Logs the outcome, reports
    it to `gateway.on_reload`, and returns it: "ok", "invalid" or "error"."""
    pid = os.getpid()
    try:
        config = load_config(path)
    except ConfigError as exc:
        log.error(
            "config reload refused (pid %d), still serving the previous config; %s: %s",
            pid,
            path,
            "; ".join(exc.problems),
        )
        outcome = INVALID
    else:
        pending = restart_only_changes(gateway.config.settings, config.settings)
        try:
            gateway.reload(config)
        except Exception:
            log.exception("config reload failed (pid %d), still serving the previous config", pid)
            outcome = ERROR
        else:
            for key in pending:
                log.warning(
                    "config reload: %s changed but takes effect only after a restart; "
                    "the old value stays in use until then",
                    key,
                )
            log.info("config reloaded from %s (pid %d): %d routes", path, pid, len(config.routes))
            outcome = OK
    gateway.on_reload(outcome)
    return outcome


class PidFileError(Exception):
    """The pid file cannot be written, read, or does not name a running proxy."""


def write_pid_file(path: Path) -> None:
    try:
        path.write_text(f"{os.getpid()}\n", encoding="ascii")
    except OSError as exc:
        raise PidFileError(
            f"listen.pid_file: cannot write {path} ({exc.strerror}); choose a writable path, "
            "e.g. /tmp/s3-proxy.pid"
        ) from None


def remove_pid_file(path: Path) -> None:
    """Remove the pid file if it still names this process (another server may own it now)."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text(encoding="ascii")) == os.getpid():
            path.unlink()


def signal_reload(path: Path) -> int:
    """Send SIGHUP to the server whose pid `path` holds; returns the pid."""
    try:
        pid = int(path.read_text(encoding="ascii"))
    except OSError as exc:
        raise PidFileError(
            f"cannot read the pid file {path} ({exc.strerror}); is the server running?"
        ) from None
    except ValueError:
        raise PidFileError(f"{path} does not hold a process id") from None
    if pid <= 0:  # kill() would signal a whole process group, or every process
        raise PidFileError(f"{path} does not hold a process id")
    _check_is_proxy(pid, path)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise PidFileError(f"no process {pid}: {path} is stale (is the server running?)") from None
    except PermissionError:
        raise PidFileError(f"not allowed to signal pid {pid}; run as the server's user") from None
    return pid


def _check_is_proxy(pid: int, path: Path) -> None:
    """SIGHUP kills a process that does not handle it: after a crash the pid in a stale file
    may belong to anything. Where /proc exists, make sure it is a proxy."""
    if not Path("/proc/self").exists():
        return
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        raise PidFileError(f"no process {pid}: {path} is stale (is the server running?)") from None
    except OSError:
        return  # e.g. hidepid: the kill below still says whether we may signal it
    if not _is_proxy_command(command.split(b"\0")):
        raise PidFileError(f"process {pid} is not the proxy: {path} is stale; not signalled")


def _is_proxy_command(args: list[bytes]) -> bool:
    """`python -m proxy serve ...` or `s3-private-proxy serve ...`."""
    module = any(pair == (b"-m", b"proxy") for pair in itertools.pairwise(args))
    script = any(Path(os.fsdecode(arg)).name == "s3-private-proxy" for arg in args)
    return (module or script) and b"serve" in args
