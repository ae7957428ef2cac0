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

import pytest
from werkzeug.serving import make_server

from .conftest import SECRET, config_dict

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


SESSION_SECRET = "session-secret-" + "s" * 40
BEARER_ISS = "https://tokens.example.com"


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """A test module's provider: its issuer URL."""
    with running_provider() as issuer:
        yield issuer


def login_config(endpoint: str, issuer: str, port: int, **login: Any) -> dict[str, Any]:
    """The suite's usual config, plus sign-in: a bearer issuer and the login's sessions, so
    each token route lists the issuers it trusts."""
    data = config_dict(endpoint)
    data["listen"]["port"] = port
    data["auth"] = {
        "name": "bearer",
        "issuer": BEARER_ISS,
        "algorithms": ["HS256"],
        "secret": SECRET,
        "login": {
            "issuer": issuer,
            "client_id": "s3-proxy",
            "client_secret": "client-secret",
            "public_url": f"http://127.0.0.1:{port}",
            "session_secret": SESSION_SECRET,
            **login,
        },
    }
    for route in data["routes"]:
        if route["access"] != "public":
            route["issuers"] = ["bearer", "login"]
    # A route that takes bearer tokens only: sign-in cannot help there.
    data["routes"].append(
        {
            "name": "api-only",
            "match": "/api/exports/{path:.+}",
            "bucket": "reports",
            "key": "exports/{path}",
            "delivery": "stream",
            "access": "authenticated",
            "issuers": ["bearer"],
        }
    )
    return data
