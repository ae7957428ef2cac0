"""Derives what `python -m proxy bench` serves from a validated config. No I/O.

Each route that serves one of the benchmarked paths is mounted twice, once delivering by
stream and once by redirect, under its own prefix, so the same objects go both ways through
otherwise the same settings; and a third time, by cloudfront, when the config has a
`cloudfront` section. Rule: a copy keeps every setting of its route that still means
something for its method; whatever the bench adds, drops or picks is said in `notes`, and the
report prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr
from yarl import URL

from .cloudfront.settings import CloudFrontSettings
from .config import (
    Config,
    ConfigError,
    ListenSettings,
    MetricsSettings,
    RateLimitSettings,
    RouteSettings,
    TokenSource,
    parse_config,
)
from .errors import ProxyError
from .presign import SIGV4_MAX_EXPIRES
from .routing import Router

METHODS = ("stream", "redirect")  # for every config
CLOUDFRONT = "cloudfront"  # a third method, for a config with a cloudfront section
PREFIXES = {
    "stream": "/__bench/stream",
    "redirect": "/__bench/redirect",
    "cloudfront": "/__bench/cloudfront",
}
METRICS_PATH = "/__bench/metrics"
# A browser can keep a redirect only while its URL stays the same: an hour, as the README's
# gallery example.
DEFAULT_STABLE = 3600


class BenchError(Exception):
    """Why the bench cannot run or finish; the message says what to do instead."""


@dataclass(frozen=True)
class Plan:
    config: dict[str, Any]  # the bench config, ready for yaml.safe_dump
    paths: tuple[str, ...]  # the benchmarked paths as sent (percent-encoded), without prefix
    needs_token: bool  # some route refuses callers without one
    notes: tuple[str, ...]  # what the bench added, dropped or picked, for the report
    methods: tuple[str, ...] = METHODS  # the delivery methods compared, in report order


def plan_bench(config: Config, paths: Sequence[str], base_dir: Path | None = None) -> Plan:
    """The bench config for `paths`, checked with the project's own loader; `base_dir` is
    where the config's relative file paths (the CloudFront key) start."""
    if not paths:
        raise BenchError("name at least one object to fetch with --path, e.g. --path /files/a.jpg")
    encoded = tuple(dict.fromkeys(_encode(path) for path in paths))
    used = sorted(set(_route_indexes(config, encoded)))  # config order keeps first-match-wins
    notes: list[str] = []
    routes: list[RouteSettings] = []
    cloudfront = config.settings.cloudfront
    methods = (*METHODS, CLOUDFRONT) if cloudfront is not None else METHODS
    for index in used:
        route = config.routes[index].settings
        routes += [_stream_copy(route, notes), _redirect_copy(route, notes)]
        if cloudfront is not None:
            routes.append(_cloudfront_copy(route, notes))
    settings = config.settings
    auth = settings.auth
    if auth.sources[0] != TokenSource(header="Authorization"):
        notes.append("the token is sent as `Authorization: Bearer` (auth.sources is set so)")
    limits = settings.limits
    lifted = any(config.routes[index].settings.rate_limit for index in used)
    if lifted or limits.rate_limit != RateLimitSettings():
        notes.append("rate limits are lifted: the bench sends its requests back to back")
    bench = settings.model_copy(
        update={
            # One process on loopback, so its CPU and counters are all in one place.
            "listen": ListenSettings(host="127.0.0.1", port=0, shutdown_grace=1),
            # Its own process on loopback, read by the bench alone.
            "metrics": MetricsSettings(
                enabled=True, listen="main", path=METRICS_PATH, access="public"
            ),
            "auth": auth.model_copy(
                update={
                    "sources": [TokenSource(header="Authorization")],
                    **_inline_public_key(auth),
                    "issuers": [
                        issuer.model_copy(update=_inline_public_key(issuer))
                        for issuer in auth.issuers
                    ]
                    if auth.issuers
                    else None,
                }
            ),
            "limits": limits.model_copy(update={"rate_limit": RateLimitSettings()}),
            "cloudfront": _absolute_keys(cloudfront, base_dir or Path.cwd()),
            "routes": routes,
        }
    )
    data = _plain(bench.model_dump(mode="python", exclude_defaults=True), "")
    try:
        parse_config(yaml.safe_dump(data, sort_keys=False), source="the bench config", env={})
    except ConfigError as exc:  # a bug here, not the user's: their config passed already
        raise BenchError(f"the bench built an invalid config: {exc}") from None
    needs_token = any(config.routes[index].rule.needs_token for index in used)
    return Plan(data, encoded, needs_token, tuple(notes), methods)


def _encode(path: str) -> str:
    """The path as the client will send it: escapes it holds are kept (a %2F stays one)."""
    if not path.startswith("/") or path.startswith("//") or "?" in path or "#" in path:
        raise BenchError(f"{path}: a --path starts with '/' and has no query, e.g. /files/a.jpg")
    return URL(path).raw_path


def _route_indexes(config: Config, paths: Sequence[str]) -> list[int]:
    router = Router([route.pattern for route in config.routes])
    indexes = []
    for path in paths:
        try:
            found = router.match(path)
        except ProxyError as exc:
            raise BenchError(f"{path}: {exc.reason}") from None
        if found is None:
            raise BenchError(f"{path}: no route in the config matches this path")
        indexes.append(found.index)
    return indexes


def _copy(route: RouteSettings, method: str, update: dict[str, Any]) -> RouteSettings:
    return route.model_copy(
        update={
            "name": f"{route.name}/{method}",
            "match": PREFIXES[method] + route.match,
            "delivery": method,
            "rate_limit": None,
            "cookie_scope": None,
            **update,
        }
    )


def _stream_copy(route: RouteSettings, notes: list[str]) -> RouteSettings:
    update: dict[str, Any] = {"stable": None}
    if route.delivery == "redirect" and route.cache_control is not None:
        # Written for S3's answer to a stable URL; on a stream it would hide revocation.
        update["cache_control"] = None
        notes.append(
            f"{route.name}: the stream copy leaves out cache_control "
            f"{route.cache_control!r} (written for redirect), so it gets the stream default, "
            "private, no-cache"
        )
    return _copy(route, "stream", update)


def _redirect_copy(route: RouteSettings, notes: list[str]) -> RouteSettings:
    update: dict[str, Any] = {"cache": None}
    stable = route.stable
    if stable is None:
        stable = min(DEFAULT_STABLE, SIGV4_MAX_EXPIRES - route.ttl)
        if stable >= 1:
            update["stable"] = stable
            notes.append(
                f"{route.name}: the redirect copy uses stable: {stable} (picked by the bench; "
                "the route sets none), so a browser can keep its URL"
            )
    if route.delivery == "stream":
        cache_control = f"private, max-age={stable}" if stable >= 1 else None
        update["cache_control"] = cache_control
        if cache_control is not None:
            notes.append(
                f"{route.name}: the redirect copy uses cache_control: {cache_control!r} "
                "(picked by the bench; the route streams), so a browser keeps the object"
            )
    return _copy(route, "redirect", update)


# Route keys a CloudFront URL cannot carry (the config refuses them on a cloudfront route).
_NOT_ON_CLOUDFRONT = ("cache_control", "disposition", "content_type", "inline_types", "cache")


def _cloudfront_copy(route: RouteSettings, notes: list[str]) -> RouteSettings:
    defaults = RouteSettings.model_fields
    update: dict[str, Any] = {
        name: defaults[name].get_default(call_default_factory=True) for name in _NOT_ON_CLOUDFRONT
    }
    dropped = [name for name in _NOT_ON_CLOUDFRONT if name in route.model_fields_set]
    if dropped:
        notes.append(
            f"{route.name}: the cloudfront copy leaves out {', '.join(dropped)} (a CloudFront "
            "URL carries no response headers; the distribution's settings decide them)"
        )
    if route.cookie_scope is not None:
        notes.append(
            f"{route.name}: the cloudfront copy signs each URL instead of cookies for "
            f"{route.cookie_scope!r}: the bench fetches every object through its route"
        )
    update.update(methods=["GET", "HEAD"], upload=None)
    stable = route.stable
    if stable is None:
        stable = min(DEFAULT_STABLE, SIGV4_MAX_EXPIRES - route.ttl)
        if stable >= 1:
            update["stable"] = stable
            notes.append(
                f"{route.name}: the cloudfront copy uses stable: {stable} (picked by the "
                "bench; the route sets none), so a browser can keep its URL"
            )
    return _copy(route, CLOUDFRONT, update)


def _absolute_keys(settings: CloudFrontSettings | None, base_dir: Path) -> Any:
    """The cloudfront section with its key paths made absolute: the bench config lives in a
    directory of its own."""
    if settings is None:
        return None

    def absolute(path: Path | None) -> Path | None:
        return None if path is None or path.is_absolute() else (base_dir / path).absolute()

    keys = [
        key.model_copy(
            update={
                "private_key": absolute(key.private_key) or key.private_key,
                "public_key": absolute(key.public_key) or key.public_key,
            }
        )
        for key in settings.keys or []
    ]
    return settings.model_copy(
        update={
            "private_key": absolute(settings.private_key) or settings.private_key,
            "keys": keys or None,
        }
    )


def _inline_public_key(issuer: Any) -> dict[str, Any]:
    """The loader read public_key_file already; inline it, as the bench config lives elsewhere."""
    return {"public_key_file": None} if issuer.public_key_file is not None else {}


def _plain(node: Any, where: str) -> Any:
    """Dumped settings as YAML data: secrets revealed (the file stays in a private temp dir)."""
    if isinstance(node, dict):
        return {
            key: _plain(value, f"{where}.{key}" if where else key) for key, value in node.items()
        }
    if isinstance(node, list | tuple):
        return [_plain(value, f"{where}[{i}]") for i, value in enumerate(node)]
    if isinstance(node, SecretStr):
        node = node.get_secret_value()
    if isinstance(node, Path):
        node = str(node)
    if isinstance(node, str) and "${" in node:
        # The loader would expand it a second time.
        raise BenchError(f"{where}: holds '${{' after expansion; the bench cannot pass it on")
    return node
