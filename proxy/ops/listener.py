"""Metrics on an address of their own (`metrics.listen`): a small threaded HTTP server that
answers `metrics.path` and nothing else. Never touches the proxy's event loop.

A thread rather than the event loop, so that the supervisor of several workers (which runs
no loop) serves it the same way a single worker does, and a busy loop does not delay a scrape.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .metrics import CONTENT_TYPE

Render = Callable[[], bytes]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: they come every few seconds."""


class MetricsListener:
    def __init__(self, host: str, port: int, path: str, render: Render) -> None:
        self._host, self._port, self._path, self._render = host, port, path, render
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the metrics listener is not started")
        return int(self._server.server_address[1])

    def start(self) -> int:
        """Bind (an OSError if the address is taken) and serve from a thread; the bound port."""
        server_class = type(
            "_Bound",
            (_Server,),
            {"address_family": socket.AF_INET6 if ":" in self._host else socket.AF_INET},
        )
        self._server = make_server(
            self._host, self._port, self._app, server_class, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-listener", daemon=True
        )
        self._thread.start()
        return self.port

    def close_in_child(self) -> None:
        """In a forked worker: let go of the inherited socket (no thread serves it there)."""
        if self._server is not None:
            self._server.socket.close()
            self._server = None
        self._thread = None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if environ.get("PATH_INFO") != self._path:
            return _answer(start_response, "404 Not Found", b'{"error": "not found"}')
        if method not in ("GET", "HEAD"):
            return _answer(
                start_response,
                "405 Method Not Allowed",
                b'{"error": "method not allowed"}',
                [("Allow", "GET, HEAD")],
            )
        body = self._render()
        start_response(
            "200 OK",
            [
                ("Content-Type", CONTENT_TYPE),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [b""] if method == "HEAD" else [body]


def _answer(
    start_response: Callable[..., Any],
    status: str,
    body: bytes,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response(status, headers + (extra or []))
    return [body]
