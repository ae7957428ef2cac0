"""A real OpenID Connect provider on loopback for the sign-in tests: the demo's embedded one
(oidc-provider-mock's Flask app served by werkzeug in a thread on 127.0.0.1), with its users
admin-1 and employee-7. Who signs in is chosen on its authorization form (POST sub=...)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from proxy.demo.provider import EmbeddedProvider

from .conftest import SECRET, config_dict


@contextmanager
def running_provider() -> Iterator[str]:
    """The provider's issuer URL while it runs (the demo's, with its two users)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    provider = EmbeddedProvider()
    provider.start()
    try:
        yield provider.issuer
    finally:
        provider.stop()


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
