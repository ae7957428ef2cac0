"""A real OpenID Connect provider on loopback for the sign-in tests: oidc-provider-mock's
Flask app served by werkzeug in a thread on 127.0.0.1, with the users the tests sign in as.
Who signs in is chosen on its authorization form (POST sub=...)."""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from werkzeug.serving import make_server

USERS: dict[str, dict[str, Any]] = {
    "admin-1": {"role": "admin", "email": "admin@example.com", "groups": ["staff", "admins"]},
    "employee-7": {"role": "employee", "email": "employee@example.com", "groups": ["staff"]},
}


@contextmanager
def running_provider(users: Mapping[str, dict[str, Any]] = USERS) -> Iterator[str]:
    """The provider's issuer URL while it runs."""
    with warnings.catch_warnings():
        # The mock itself still imports Authlib's deprecated authlib.jose (not our code).
        warnings.simplefilter("ignore", DeprecationWarning)
        import oidc_provider_mock

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    app = oidc_provider_mock.app(
        require_nonce=True,
        user_claims=[oidc_provider_mock.User(sub=sub, claims=dict(c)) for sub, c in users.items()],
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
