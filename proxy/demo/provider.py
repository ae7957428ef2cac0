"""The demo's sign-in provider: a real OpenID Connect provider (oidc-provider-mock's Flask
app) in a thread on loopback, where whoever signs in picks a user on its form. For
`demo --sign-in` and the tests; never for production (anyone may sign in as anyone)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

USERS: dict[str, dict[str, Any]] = {
    "admin-1": {"role": "admin", "email": "admin@example.com", "groups": ["staff", "admins"]},
    "employee-7": {"role": "employee", "email": "employee@example.com", "groups": ["staff"]},
}


class EmbeddedProvider:
    def __init__(self, users: Mapping[str, Mapping[str, Any]] = USERS) -> None:
        with warnings.catch_warnings():
            # The mock runs Authlib's deprecated authlib.jose; Authlib installs an "always"
            # filter for its warnings on import, so ours goes in front of it.
            import authlib.deprecate  # noqa: F401

            warnings.simplefilter("ignore", DeprecationWarning)
            import oidc_provider_mock

        self._app = oidc_provider_mock.app(
            require_nonce=True,
            user_claims=[
                oidc_provider_mock.User(sub=sub, claims=dict(claims))
                for sub, claims in users.items()
            ],
        )
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.issuer = ""

    def start(self) -> None:
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.issuer = f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
