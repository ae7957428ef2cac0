"""`python -m proxy revoke`: revoke, list and undo, straight in Redis or through the server.

With `state.backend: redis` the command writes Redis itself, and every replica picks the
change up within a second. With `memory` the revocations live in the server process, which
no other process can reach: the command asks the running server's admin endpoint instead
(`admin.access` must let its token in).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

from ..auth import issue_token
from ..config import Config
from .connect import StateDown, open_link
from .redislog import RedisRevocations
from .revocations import Kind, Revocation, new_revocation

TOKEN_ENV = "PROXY_ADMIN_TOKEN"  # noqa: S105 - the variable's name


@dataclass(frozen=True)
class Order:
    """What the operator asked for."""

    action: Literal["revoke", "undo", "list"]
    kind: Kind = "sub"
    value: str = ""
    iss: str | None = None
    ttl: int | None = None


def run_order(
    config: Config,
    order: Order,
    url: str | None = None,
    token: str | None = None,
    claims: dict[str, Any] | None = None,
) -> int:
    """Carry out the order and print the result (JSON, one entry a line); the exit code."""
    if config.settings.state.backend == "redis":
        return asyncio.run(_in_redis(config, order))
    return _through_server(config, order, url, token, claims or {})


async def _in_redis(config: Config, order: Order) -> int:
    settings = config.settings
    link = open_link(settings.state)
    # A person waits on this, not a request: a second is fine, the request timeout is not.
    store = RedisRevocations(
        link.redis, settings.state.key_prefix, max(1.0, settings.state.timeout)
    )
    now = time.time()
    try:
        if order.action == "list":
            for entry in await store.load(now):
                print(entry.dumps())
            return 0
        if order.action == "undo":
            removed, _ = await store.delete(order.kind, order.value, order.iss, now)
            if not removed:
                print("no such revocation", file=sys.stderr)
                return 1
            print(json.dumps({"removed": {order.kind: order.value, "iss": order.iss}}))
            return 0
        entry = _entry(config, order, now)
        await store.put(entry, now)
        print(entry.dumps())
        return 0
    except StateDown as exc:
        print(f"cannot reach Redis at state.url ({exc})", file=sys.stderr)
        return 2
    finally:
        await link.close()


def _entry(config: Config, order: Order, now: float) -> Revocation:
    settings = config.settings
    return new_revocation(
        order.kind,
        order.value,
        order.iss,
        now,
        settings.revocation.max_token_lifetime,
        settings.auth.leeway,
        order.ttl,
    )


def _through_server(
    config: Config, order: Order, url: str | None, token: str | None, claims: dict[str, Any]
) -> int:
    settings = config.settings
    if config.admin_access is None:
        print(
            "admin.access is not set: with state.backend memory the revocations live in the "
            "server process, so this command asks its admin endpoint; set admin.access (e.g. "
            "{claims: {role: admin}}) and restart the server, or use state.backend redis",
            file=sys.stderr,
        )
        return 2
    listen = settings.listen
    endpoint = url or f"http://{listen.host}:{listen.port}{settings.admin.path}"
    if urlsplit(endpoint).scheme not in ("http", "https"):
        print(f"--url must be an http:// or https:// URL (got {endpoint!r})", file=sys.stderr)
        return 2
    headers = {"Accept": "application/json"}
    if config.admin_access.needs_token:
        token = token or os.environ.get(TOKEN_ENV)
        if not token:
            try:
                token = issue_token(settings.auth, {"sub": "proxy-revoke", **claims}, 60)
            except ValueError:
                print(
                    f"no admin token: pass --token or export {TOKEN_ENV} (a token that "
                    "admin.access lets in)",
                    file=sys.stderr,
                )
                return 2
        headers["Authorization"] = f"Bearer {token}"
    method, body = "GET", None
    if order.action == "revoke":
        method, headers["Content-Type"] = "POST", "application/json"
        asked: dict[str, Any] = {order.kind: order.value}
        if order.iss is not None:
            asked["iss"] = order.iss
        if order.ttl is not None:
            asked["ttl"] = order.ttl
        body = json.dumps(asked).encode()
    elif order.action == "undo":
        method = "DELETE"
        query = {order.kind: order.value, **({"iss": order.iss} if order.iss else {})}
        endpoint += "?" + urlencode(query)
    request = urllib.request.Request(endpoint, data=body, headers=headers, method=method)  # noqa: S310 - scheme checked above
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        print(f"the proxy refused: {exc.code} {_error_of(exc.read())}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"cannot reach the proxy at {endpoint} ({reason})", file=sys.stderr)
        return 2
    if order.action == "list":
        for entry in answer.get("revocations", []):
            print(json.dumps(entry, separators=(",", ":")))
    else:
        print(json.dumps(answer.get("revocation") or answer, separators=(",", ":")))
    return 0


def _error_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))[:200]
    except (ValueError, AttributeError):
        return ""
