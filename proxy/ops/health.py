"""Liveness and readiness: whether this process runs, and whether it can serve now.

Readiness runs its checks (credentials, each route's bucket, JWKS keys) at most once every
`health.cache` seconds, by the injected clock: a burst of probes shares one run, and a probe
that comes while a run is under way waits for that run instead of starting another. Each
check is bounded by `health.timeout`. Changes of state are logged once, with what is wrong;
probes themselves never are.

Rule: the probe is anonymous and on the public port, so its answer carries the status only.
What is wrong (bucket names, S3's and Redis's errors) goes to the log and, on the probe
itself, only to a caller that passes `admin.access`; never a secret to anyone.

A check may also say what is degraded while the process still serves (Redis unreachable, the
revocations checked on this process's copy): read at each probe, never cached, and shown
beside the status (to an operator, as problems are) without making it fail.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from ..errors import ProxyError
from ..storage import Storage
from .measured import STALL_WINDOW, MeasuredStorage

log = logging.getLogger("proxy.health")

Problem = Awaitable[str | None]


@dataclass(frozen=True)
class Check:
    name: str  # says what was checked: "aws credentials", "bucket hr-private", ...
    run: Callable[[], Problem]  # None when fine, else what is wrong
    degraded: Callable[[], str | None] | None = None  # what is wrong while still serving


class Readiness:
    def __init__(
        self,
        checks: Sequence[Check],
        cache: float,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._checks = tuple(checks)
        self._cache = cache
        self._timeout = timeout
        self._clock = clock
        self._problems: list[str] | None = None
        self._checked_at = 0.0
        self._running: asyncio.Future[list[str]] | None = None

    async def problems(self) -> list[str]:
        """What keeps the proxy from serving; empty when it is ready."""
        if self._problems is not None and self._clock() - self._checked_at < self._cache:
            return self._problems
        running = self._running
        if running is None:
            running = self._running = asyncio.ensure_future(self._run())
        # Shielded: a probe that hangs up does not cancel the run the others wait for.
        return await asyncio.shield(running)

    def degraded(self) -> list[str]:
        """What is wrong now while the proxy still serves; no I/O."""
        found = []
        for check in self._checks:
            note = check.degraded() if check.degraded is not None else None
            if note is not None:
                found.append(f"{check.name}: {note}")
        return found

    async def _run(self) -> list[str]:
        try:
            found = await asyncio.gather(*(self._one(check) for check in self._checks))
            problems = [problem for problem in found if problem is not None]
            if problems != self._problems:
                if problems:
                    log.warning("not ready: %s", "; ".join(problems))
                elif self._problems is not None:
                    log.info("ready again")
            self._problems, self._checked_at = problems, self._clock()
            return problems
        finally:
            self._running = None

    async def _one(self, check: Check) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                problem = await check.run()
        except TimeoutError:
            problem = f"no answer within health.timeout ({self._timeout:g} s)"
        except ProxyError as exc:
            problem = exc.reason
        except Exception as exc:  # a failed check is an answer too, not a crash of the probe
            problem = f"check failed ({type(exc).__name__})"
        return None if problem is None else f"{check.name}: {problem}"


def storage_checks(storage: Storage, buckets: Sequence[str]) -> list[Check]:
    """Credentials resolve, and each bucket answers them (one check per bucket, however many
    routes share it)."""

    async def credentials() -> str | None:
        try:
            await storage.credentials()
        except ProxyError:
            return (
                "none resolved from the standard chain (environment, config files, container "
                "or instance role)"
            )
        return None

    def bucket_check(bucket: str) -> Check:
        async def reachable() -> str | None:
            try:
                await storage.credentials()
            except ProxyError:
                return None  # said once, by the credentials check
            return await storage.check_bucket(bucket)

        return Check(f"bucket {bucket}", reachable)

    checks = [Check("aws credentials", credentials)] + [
        bucket_check(bucket) for bucket in dict.fromkeys(buckets)
    ]
    if isinstance(storage, MeasuredStorage):
        checks.append(_stalling(storage))
    return checks


def _stalling(storage: MeasuredStorage) -> Check:
    """S3 lately sent no response head within s3.first_byte_timeout: reported as degraded,
    never failing readiness. Every replica shares S3, so failing them all at once would only
    turn a partial outage into a total one (redirects, for one, need no S3 call)."""

    async def nothing() -> str | None:
        return None

    def stalls() -> str | None:
        count = storage.recent_stalls()
        if not count:
            return None
        return (
            f"{count} request(s) got no response head within s3.first_byte_timeout in the "
            f"last {STALL_WINDOW:g} s (answered 504)"
        )

    return Check("s3 stalling", nothing, stalls)


def live_response() -> web.Response:
    return _json(200, {"status": "ok"})


async def ready_response(
    readiness: Readiness, draining: bool, detailed: bool = False
) -> web.Response:
    """The probe's answer; `detailed` (a caller that passed admin.access) adds what is wrong
    and what is degraded (the module's rule)."""
    if draining:
        return _json(503, {"status": "draining"})
    problems = await readiness.problems()
    shown: dict[str, object] = {}
    if detailed:
        if problems:
            shown["problems"] = problems
        degraded = readiness.degraded()
        if degraded:
            shown["degraded"] = degraded
    if problems:
        return _json(503, {"status": "not ready", **shown})
    return _json(200, {"status": "ready", **shown})


def _json(status: int, body: object) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
