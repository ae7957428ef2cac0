"""The Redis client the state backend and `python -m proxy revoke` use: one server, or the
master Sentinel names, over TLS when the URL says `rediss`; and the deadline every call to it
runs under (`bounded`), which turns its failures into one loggable StateDown.

Rules:
1. Every client has a bounded, blocking pool (a caller waits at most `state.timeout` for a
   connection) and redis-py retries nothing: the caller's own deadline is the only one.
2. Through Sentinel, each new connection asks a sentinel where the master is. A demoted
   master goes on taking writes for seconds, until Sentinel reconfigures it (and then drops
   them as it resyncs), so the state asks again every second (`follow_master`): when the
   answer changes, every connection to the old master is closed, in use or not. Later, a
   connection to a master that was demoted fails its next write (redis-py turns READONLY
   into a connection error) and the one after it goes to the new master. The sentinels
   share the timeout and TLS settings, and have their own password
   (`state.sentinel_password`).
3. Nothing here logs, and no error it raises carries the URL (it may hold a password).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..config import StateSettings, StateTls
from ..redisurl import is_sentinel, sentinel_address, uses_tls

T = TypeVar("T")


class StateDown(Exception):
    """Redis did not answer in time, or answered with an error; str() is loggable."""


async def bounded(deadline: float, call: Callable[[], Awaitable[T]]) -> T:
    """Run one Redis call under the deadline; its failures become StateDown."""
    try:
        async with asyncio.timeout(deadline):
            return await call()
    except TimeoutError:
        raise StateDown("timed out") from None
    except (RedisError, OSError) as exc:
        # The class name only: a message may name the server, never the URL's password,
        # but keep log lines short and alike.
        raise StateDown(type(exc).__name__) from None


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (it finds the master) with the blocking pool's bounded wait (rule 1).

    Both pools share ConnectionPool's interface; Sentinel's overrides only where a connection
    goes and which ones it keeps, the blocking one only how a connection is waited for."""


@dataclass
class RedisLink:
    """A client, and the sentinel clients behind it that must be closed with it."""

    redis: Redis
    sentinel: Sentinel | None = None

    async def follow_master(self) -> tuple[str, int] | None:
        """Through Sentinel: ask where the master is; if it moved, close every connection to
        the old one and say where it is now (rule 2). None when it did not move."""
        pool = self.redis.connection_pool
        if self.sentinel is None or not isinstance(pool, BlockingSentinelPool):
            return None
        before = pool.master_address
        # Asking also closes the idle connections to a former master.
        now: tuple[str, int] = await pool.get_master_address()  # type: ignore[no-untyped-call]
        if before is None or now == before:
            return None
        await pool.disconnect(inuse_connections=True)
        return now

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)
        if self.sentinel is not None:
            await self.sentinel.aclose()


def open_link(settings: StateSettings) -> RedisLink:
    if settings.url is None:
        raise ValueError("state.url is not set")
    url = settings.url.get_secret_value()
    no_retry = Retry(NoBackoff(), 0)
    common: dict[str, Any] = {
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        "retry": no_retry,
    }
    tls = _tls_options(settings.tls) if uses_tls(url) else {}
    if not is_sentinel(url):
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=settings.max_connections,
            timeout=settings.timeout,
            **common,
            **tls,
        )
        return RedisLink(Redis(connection_pool=pool, retry=no_retry))
    address = sentinel_address(url)
    sentinel_options: dict[str, Any] = {**common, **tls}
    if address.tls:
        sentinel_options["ssl"] = True
    if settings.sentinel_password is not None:
        sentinel_options["password"] = settings.sentinel_password.get_secret_value()
    sentinel = Sentinel(list(address.sentinels), sentinel_kwargs=sentinel_options)
    master: Redis = sentinel.master_for(
        address.service,
        connection_pool_class=BlockingSentinelPool,
        max_connections=settings.max_connections,
        timeout=settings.timeout,
        db=address.db,
        username=address.username,
        password=address.password,
        ssl=address.tls,
        **common,
        **tls,
    )
    return RedisLink(master, sentinel)


def _tls_options(tls: StateTls) -> dict[str, Any]:
    options: dict[str, Any] = {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": tls.check_hostname,
    }
    if tls.ca_file is not None:
        options["ssl_ca_certs"] = str(tls.ca_file)
    if tls.cert_file is not None and tls.key_file is not None:
        options["ssl_certfile"] = str(tls.cert_file)
        options["ssl_keyfile"] = str(tls.key_file)
    return options
