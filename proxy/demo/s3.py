"""The demo's S3: moto's server in a thread on loopback, counting what reaches it.

It counts requests signed in a header (the proxy's own S3 calls) apart from presigned ones
(browsers following redirects) and from the CloudFront stand-in's origin fetches (its
`User-Agent: Amazon CloudFront`), the object bytes each kind took, and the 304s S3 answered
each kind (a revalidated copy, no bytes), so the demo can show where the traffic of each
delivery method goes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

StartResponse = Callable[..., Any]


class CountingS3:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = {
            "proxy_requests": 0,
            "proxy_bytes": 0,
            "proxy_not_modified": 0,
            "presigned_requests": 0,
            "presigned_bytes": 0,
            "presigned_not_modified": 0,
            "edge_requests": 0,
            "edge_bytes": 0,
            "edge_not_modified": 0,
        }
        self._app = DomainDispatcherApplication(create_backend_app)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    def start(self) -> None:
        self._server = make_server(
            "127.0.0.1", 0, self._count, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
        )

    def reset(self) -> None:
        with self._lock:
            for name in self.counts:
                self.counts[name] = 0

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def _count(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        presigned = "X-Amz-Signature=" in environ.get("QUERY_STRING", "")
        edge = environ.get("HTTP_USER_AGENT", "").startswith("Amazon CloudFront")
        kind = "presigned" if presigned else "edge" if edge else "proxy"
        is_get = environ.get("REQUEST_METHOD") == "GET"
        with self._lock:
            self.counts[f"{kind}_requests"] += 1

        def answer(status: str, headers: Any, exc_info: Any = None) -> Any:
            if status.startswith("304"):
                with self._lock:
                    self.counts[f"{kind}_not_modified"] += 1
            return start_response(status, headers, exc_info)

        body: Iterable[bytes] = self._app(environ, answer)
        if not is_get:
            return body
        return self._measure(body, kind)

    def _measure(self, body: Iterable[bytes], kind: str) -> Iterable[bytes]:
        try:
            for chunk in body:
                with self._lock:
                    self.counts[f"{kind}_bytes"] += len(chunk)
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
