"""Where Redis is, as `state.url` says it: one server (`redis://`, `rediss://`, `unix://`) or a
master found through Sentinel (`redis+sentinel://`, `rediss+sentinel://`). Parsing only: no
I/O, and no message here ever repeats any part of the URL (it may hold a password).

A Sentinel URL names its sentinels, then the master's service name and, optionally, a
database:

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]

The port defaults to 26379. A user and password in it are the master's (as in `redis://`);
sentinels that ask for a password of their own get it from `state.sentinel_password`. The
`rediss+` form speaks TLS to the sentinels and to the master alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
TLS_SCHEMES = ("rediss", "rediss+sentinel")
SENTINEL_PORT = 26379
EXAMPLE = "redis+sentinel://sentinel-1:26379,sentinel-2:26379/mymaster/0"


@dataclass(frozen=True)
class SentinelAddress:
    """A master to ask Sentinel for."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def check_url(url: str) -> None:
    """ValueError, saying what to fix, for a URL the state backend cannot use."""
    scheme = _scheme(url)
    if scheme in SENTINEL_SCHEMES:
        sentinel_address(url)
    elif scheme not in PLAIN_SCHEMES:
        raise ValueError(
            "must be a redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel:// "
            "URL, e.g. redis://127.0.0.1:6379/0"
        )
    else:
        try:
            urlsplit(url).port  # noqa: B018 - parsed for its ValueError
        except ValueError:
            raise ValueError("the port in the URL is not a number from 1 to 65535") from None


def uses_tls(url: str) -> bool:
    return _scheme(url) in TLS_SCHEMES


def is_sentinel(url: str) -> bool:
    return _scheme(url) in SENTINEL_SCHEMES


def sentinel_address(url: str) -> SentinelAddress:
    """The parts of a Sentinel URL; ValueError naming what is wrong (never the URL)."""
    scheme = _scheme(url)
    if scheme not in SENTINEL_SCHEMES:
        raise ValueError("not a redis+sentinel:// URL")
    rest = url.split("://", 1)[1]
    where, _, query = rest.partition("?")
    if query or "#" in where:
        raise ValueError(
            f"a {scheme}:// URL takes no query or fragment; TLS files and the sentinels' "
            "password are state.tls and state.sentinel_password"
        )
    netloc, _, path = where.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    sentinels = tuple(_host_port(part, n) for n, part in enumerate(hosts.split(","), 1))
    parts = path.split("/") if path else []
    if not parts or not parts[0]:
        raise ValueError(f"a {scheme}:// URL names the master's service after the hosts: {EXAMPLE}")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError(f"after the service name only a database number may follow: {EXAMPLE}")
    db = int(parts[1]) if len(parts) == 2 else 0
    return SentinelAddress(
        sentinels, unquote(parts[0]), db, username, password, scheme == "rediss+sentinel"
    )


def _host_port(text: str, number: int) -> tuple[str, int]:
    if text.startswith("["):  # an IPv6 address: [::1]:26379
        host, bracket, after = text[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError(f"sentinel {number}: expected [address]:port")
        port_text = after[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"sentinel {number}: no host; e.g. {EXAMPLE}")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"sentinel {number}: the port is not a number from 1 to 65535")
    return host, int(port_text)


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""
