"""`python -m proxy revoke`: revoke, list and undo, straight in Redis or through the server.

With `state.backend: redis` the command writes Redis itself, and every replica picks the
change up within a second. With `memory` the revocations live in the server process, which
no other process can reach: the command asks the running server's admin endpoint instead
(`admin.access` must let its token in).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shlex
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import jwt

from ..audit import AuditUnavailable, record_from_command_line
from ..auth import issue_token
from ..config import Config
from ..policy import claims_that_pass
from ..request import new_request_id
from .redisstate import RedisRevocations, StateDown, redis_client
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
    redis = redis_client(settings.state)
    # A person waits on this, not a request: a second is fine, the request timeout is not.
    store = RedisRevocations(redis, settings.state.key_prefix, max(1.0, settings.state.timeout))
    now = time.time()
    try:
        if order.action == "list":
            for entry in await store.load(now):
                print(entry.dumps())
            return 0
        if order.action == "undo":
            if not await store.delete(order.kind, order.value, order.iss, now):
                print("no such revocation", file=sys.stderr)
                return 1
            _audit(config, "revocation.removed", order)
            print(json.dumps({"removed": {order.kind: order.value, "iss": order.iss}}))
            return 0
        entry = _entry(config, order, now)
        await store.put(entry, now)
        _audit(config, "revocation.added", order)
        print(entry.dumps())
        return 0
    except StateDown as exc:
        print(f"cannot reach Redis at state.url ({exc})", file=sys.stderr)
        return 2
    finally:
        await redis.aclose(close_connection_pool=True)


def _audit(config: Config, event: str, order: Order) -> None:
    """Written Redis itself, so no server sees it: this command records it (audit.path)."""
    path = config.settings.audit.path
    if path is None:
        return
    what: dict[str, Any] = {order.kind: order.value}
    if order.kind == "sub":
        what["iss"] = order.iss
    fields = {
        "request_id": new_request_id(),
        "sub": None,
        "iss": None,
        "client": None,
        "route": None,
        "method": None,
        "status": None,
        "what": what,
        "by": f"command line ({_operator()})",
    }
    try:
        record_from_command_line(path, event, fields)
    except (OSError, AuditUnavailable) as exc:
        print(f"audit: {exc}; the change is made all the same", file=sys.stderr)


def _operator() -> str:
    """Who ran the command, as the machine knows them: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


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
        if exc.code == 403:
            print(_admin_hint(config, token, claims), file=sys.stderr)
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


def _admin_hint(config: Config, token: str | None, claims: dict[str, Any]) -> str:
    """Which claim admin.access wants that the token sent lacks, and how to supply it."""
    rule = config.admin_access
    sent = claims
    if token is not None:
        # Only to name what is missing: the server has already judged the token.
        with contextlib.suppress(jwt.PyJWTError):
            sent = jwt.decode(token, options={"verify_signature": False})
    denial = rule.denial({"sub": "proxy-revoke", **sent}, {}) if rule is not None else None
    wanted = claims_that_pass(rule) if rule is not None else None
    how = claim_arguments(wanted) if wanted else "--claim NAME=VALUE"
    what = f"admin.access refuses this token ({denial})" if denial else "admin.access refuses it"
    return f"{what}; mint one it lets in with {how}, or pass --token (or ${TOKEN_ENV})"


def claim_arguments(claims: dict[str, Any]) -> str:
    """`--claim` items that give a minted token these claims, quoted for a shell. A string is
    written bare unless it would read as JSON (then `--claim` would take it as a number...)."""
    items = []
    for name, value in claims.items():
        text = json.dumps(value)
        if isinstance(value, str):
            try:
                json.loads(value)
            except ValueError:
                text = value
        items.append(f"--claim {shlex.quote(f'{name}={text}')}")
    return " ".join(items)


def _error_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", ""))[:200]
    except (ValueError, AttributeError):
        return ""
