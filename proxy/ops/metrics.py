"""The proxy's Prometheus series: defined once here, counted on the request path, rendered by
prometheus_client. No I/O.

Rules:
1. Label values come from the config (route names) or from fixed sets in this module, never
   from the request: an unmatched path is route "-", an unusual method is "other".
2. The request path pays for a dict lookup and a few increments: labelled children are made
   once per label set and kept (`.labels()` validates and locks on every call), and their
   values (a counter's, a histogram's buckets and sum) are incremented directly, without
   Counter.inc's and Histogram.observe's per-call checks and bucket loop. A test compares
   the exposition with what those give.
3. What is cheaper kept as a plain number where it happens (cache hits, connections in use,
   streams in flight, requests, S3 calls, their durations, token checks) is read by
   `sample()`: before each scrape, and every second in a worker of several (whose numbers
   another process renders). Counts made on the request path are written out at once in a
   worker of several instead: its numbers must be current whenever another process renders.
"""

from __future__ import annotations

import asyncio
import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from . import multiprocess

# The text format every Prometheus reads; the names here need nothing newer versions add.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "-"  # the route label of a request no route matched (or refused before routing)
NO_DELIVERY = "none"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "OPTIONS"})
_DELIVERIES = {
    "stream": "stream",
    "redirect": "redirect",
    "auto:stream": "stream",
    "auto:redirect": "redirect",
    "cloudfront": "cloudfront",
    "sign": "sign",
}
CACHES = ("object", "metadata", "link", "token")
TOKEN_OUTCOMES = ("valid", "expired", "invalid")
STOP_REASONS = ("revoked",)
S3_OUTCOMES = (
    "ok",
    "not_found",
    "range_not_satisfiable",
    "precondition_failed",
    "timeout",
    "error",
)
S3_OPERATIONS = (
    "HeadObject",
    "GetObject",
    "ListObjectsV2",
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "ListMultipartUploads",
    "ListParts",
)
# What a state backend failed at (the start of its failure reasons, state/base.py) -> label.
STATE_OPERATIONS = {
    "revocations": "revocations",
    "rate limits": "rate_limits",
    "stream slots": "stream_slots",
    "sentinel": "sentinel",
}
# (check, decision) -> the Counters field (state/base.py) that counts it.
STATE_DECISIONS = {
    ("limits", "let_through"): "limits_let_through",
    ("limits", "refused"): "limits_refused",
    ("revocations", "unconfirmed_copy"): "revocations_unconfirmed",
    ("revocations", "let_through"): "revocations_let_through",
    ("revocations", "refused"): "revocations_refused",
}
# The sign API's presigned multipart entries, and how each ended: answered, refused (4xx:
# the entry's own status) or failed (5xx: S3 or the proxy).
MULTIPART_STEPS = ("multipart", "resume", "complete", "abort")
STEP_OUTCOMES = ("ok", "refused", "failed")
# Seconds: from a cached answer on loopback to a large object over a slow link.
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Every histogram's upper bounds, as prometheus_client keeps them (the last catches all).
_BOUNDS = [*map(float, _LATENCY), math.inf]
_SAMPLE_EVERY = 1.0  # seconds, in a worker of several


class CacheCounts(Protocol):
    """What a cache keeps about itself: plain counters, bumped on each lookup."""

    hits: int
    misses: int


class StateView(Protocol):
    """What a state backend keeps about itself (proxy/state/base.py): plain numbers, bumped
    where they happen and read before each scrape."""

    @property
    def counters(self) -> Any: ...  # state.base.Counters: ints, and by_reason: dict[str, int]

    @property
    def revoked(self) -> Sized: ...

    def is_up(self) -> bool: ...

    def stale_for(self) -> float | None: ...


class _Count:
    """A counter child's count kept plainly (rule 3), and the value `sample()` sets to it."""

    __slots__ = ("n", "value")

    def __init__(self, value: Any) -> None:
        self.n = 0
        self.value = value


class _RouteCounts:
    """What the requests of one (route, delivery) label pair add to its series, kept plainly
    (rule 3): durations, and for delivered requests times to first byte, body bytes and
    304s. Only the series a request has used are set: none appears before it has a count."""

    __slots__ = ("_series", "body_bytes", "duration", "not_modified", "not_modified_value", "ttfb")

    def __init__(self, duration: _Observed, ttfb: _Observed | None, body_bytes: Any) -> None:
        self.duration = _Times()
        self.ttfb = _Times()
        self.body_bytes = 0
        self.not_modified = 0
        self._series = (duration, ttfb, body_bytes)
        self.not_modified_value: Any = None  # made at the first 304, as before

    def sample(self) -> None:
        duration, ttfb, body_bytes = self._series
        duration.set(self.duration)
        if ttfb is not None:
            ttfb.set(self.ttfb)
            body_bytes.set(self.body_bytes)
        if self.not_modified_value is not None:
            self.not_modified_value.set(self.not_modified)


class _RequestSeries:
    """Where one (route, delivery, method, status) combination counts: its request count
    (shared with every combination of the same labels) and its route's counts."""

    __slots__ = ("delivered", "not_modified", "requests", "route")

    def __init__(
        self, requests: _Count, route: _RouteCounts, delivered: bool, not_modified: bool
    ) -> None:
        self.requests = requests
        self.route = route
        self.delivered = delivered  # False for 404s, refusals, ...: no first byte, no body
        self.not_modified = not_modified


@dataclass
class _WrittenSeries:
    """The values one combination writes to at once, in a worker of several (rule 2)."""

    requests: Any  # a counter child's value: inc() under its own lock
    duration: _Observed
    ttfb: _Observed | None  # None for requests that delivered nothing (404s, refusals, ...)
    body_bytes: Any
    not_modified: Any


class _Observed:
    """A histogram child, observed without its per-call layers (rule 2): the same buckets
    (the first whose bound is >= the value, as Histogram.observe picks) and sum, each a
    value with its own lock, as prometheus_client keeps them. tests/test_metrics.py checks
    the exposition against Histogram.observe's."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, child: Any) -> None:
        self._bounds = list(child._upper_bounds)
        self._buckets = child._buckets
        self._sum = child._sum

    def observe(self, value: float) -> None:
        self._sum.inc(value)
        self._buckets[bisect_left(self._bounds, value)].inc(1)

    def set(self, times: _Times) -> None:
        """Set to plainly kept numbers (rule 3); list() copies them in one step."""
        for value, count in zip(self._buckets, list(times.buckets), strict=True):
            value.set(count)
        self._sum.set(times.sum)


class _Times:
    """A histogram's numbers kept plainly (rule 3): the count in each bucket of _BOUNDS, and
    the sum."""

    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * len(_BOUNDS)
        self.sum = 0.0


def _value(child: Any) -> Any:
    """A counter child's value, incremented without its per-call checks (rule 2)."""
    return child._value


class Telemetry:
    """The series of one proxy process and what feeds them. Independent of the config, so a
    reloaded config can keep counting into the same series."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        route_delivery = ["route", "delivery"]
        self._requests = Counter(
            "proxy_requests",
            "Requests answered, by route, delivery method, HTTP method and status class.",
            ["route", "delivery", "method", "status_class"],
            registry=registry,
        )
        self._duration = Histogram(
            "proxy_request_duration_seconds",
            "Seconds from a request's arrival to the end of its handling.",
            route_delivery,
            buckets=_LATENCY,
            registry=registry,
        )
        self._ttfb = Histogram(
            "proxy_time_to_first_byte_seconds",
            "Seconds from a delivered request's arrival to its first response byte.",
            route_delivery,
            buckets=_LATENCY,
            registry=registry,
        )
        self._bytes = Counter(
            "proxy_response_body_bytes",
            "Response body bytes the proxy itself sent (a redirect sends none).",
            route_delivery,
            registry=registry,
        )
        self._not_modified = Counter(
            "proxy_not_modified_responses",
            "304 answers: the client's cached copy was still good.",
            route_delivery,
            registry=registry,
        )
        s3_calls = Counter(
            "proxy_s3_requests",
            "Requests the proxy made to S3, by operation and outcome (presigning makes none).",
            ["operation", "outcome"],
            registry=registry,
        )
        s3_duration = Histogram(
            "proxy_s3_request_duration_seconds",
            "Seconds until S3's answer head arrived (retries included).",
            ["operation"],
            buckets=_LATENCY,
            registry=registry,
        )
        self._s3 = {
            (operation, outcome): _value(s3_calls.labels(operation, outcome))
            for operation in S3_OPERATIONS
            for outcome in S3_OUTCOMES
        }
        self._s3_duration = {
            operation: _Observed(s3_duration.labels(operation)) for operation in S3_OPERATIONS
        }
        # Rule 3: every S3 call is counted here, and sample() sets the series to these. A
        # counter's and a histogram's value each take a lock per increment (about 11k
        # instructions per S3 call in all; these, about 2k). In a worker of several, whose
        # numbers another process renders at any time, each call is written out at once (so
        # are requests and token checks).
        self._written_out = multiprocess.directory() is not None
        self._s3_calls = dict.fromkeys(self._s3, 0)
        self._s3_times = {operation: _Times() for operation in S3_OPERATIONS}
        self._pool_in_use = _live_gauge(
            "proxy_s3_pool_connections_in_use", "S3 connections busy with a request.", registry
        )
        self._pool_waiting = _live_gauge(
            "proxy_s3_pool_waiting_requests",
            "Requests waiting for a free S3 connection (s3.max_connections are busy).",
            registry,
        )
        self._streams = _live_gauge(
            "proxy_streams_in_flight", "Streamed responses being sent.", registry
        )
        self._in_flight = _live_gauge(
            "proxy_requests_in_flight", "Requests being handled.", registry
        )
        hits = Counter(
            "proxy_cache_hits", "Lookups a cache answered.", ["cache"], registry=registry
        )
        misses = Counter(
            "proxy_cache_misses", "Lookups a cache could not answer.", ["cache"], registry=registry
        )
        self._cache_hits = {name: hits.labels(name) for name in CACHES}
        self._cache_misses = {name: misses.labels(name) for name in CACHES}
        tokens = Counter(
            "proxy_token_verifications",
            "Presented credentials checked, by kind (jwt, link) and outcome.",
            ["kind", "outcome"],
            registry=registry,
        )
        self._tokens = {
            (kind, outcome): _value(tokens.labels(kind, outcome))
            for kind in ("jwt", "link")
            for outcome in TOKEN_OUTCOMES
        }
        self._token_counts = dict.fromkeys(self._tokens, 0)  # rule 3, as the S3 calls
        self._rate_limited = Counter(
            "proxy_rate_limited",
            "Requests refused with 429 by a rate limit, by route and limit (client, subject).",
            ["route", "limit"],
            registry=registry,
        )
        stopped = Counter(
            "proxy_streams_stopped",
            "Streams the proxy cut short itself, by reason (revoked: their token, subject or "
            "share link was revoked while they ran).",
            ["reason"],
            registry=registry,
        )
        self._streams_stopped = {reason: stopped.labels(reason) for reason in STOP_REASONS}
        steps = Counter(
            "proxy_multipart_steps",
            "Presigned multipart entries of the sign API, by step and outcome (ok, refused: "
            "4xx, failed: 5xx).",
            ["step", "outcome"],
            registry=registry,
        )
        self._steps = {
            (step, outcome): steps.labels(step, outcome)
            for step in MULTIPART_STEPS
            for outcome in STEP_OUTCOMES
        }
        self._part_urls = Counter(
            "proxy_multipart_part_urls",
            "Presigned UploadPart URLs handed out by the sign API (multipart and resume).",
            registry=registry,
        )
        reloads = Counter(
            "proxy_config_reloads",
            "Config reloads, by outcome (ok: the new config serves; failed: the old one does).",
            ["outcome"],
            registry=registry,
        )
        self._reloads = {outcome: reloads.labels(outcome) for outcome in ("ok", "failed")}
        state_errors = Counter(
            "proxy_state_errors",
            "Calls to the shared state (Redis) that failed, or were skipped while backing off "
            "after a failure, by operation.",
            ["operation", "outcome"],
            registry=registry,
        )
        self._state_errors = {
            (operation, outcome): state_errors.labels(operation, outcome)
            for operation in (*STATE_OPERATIONS.values(), "other")
            for outcome in ("failed", "skipped")
        }
        decisions = Counter(
            "proxy_state_decisions",
            "Requests decided without the shared state's answer: rate limits let through or "
            "refused, tokens checked on an unconfirmed copy of the revocations (inside "
            "state.outage_grace), let through or refused past it.",
            ["check", "decision"],
            registry=registry,
        )
        self._state_decisions = {key: decisions.labels(*key) for key in STATE_DECISIONS}
        self._state_restores = Counter(
            "proxy_state_restores",
            "Times Redis was found to have lost revocations (restarted empty, flushed, failed "
            "over to a replica that missed writes).",
            registry=registry,
        )
        self._state_restored = Counter(
            "proxy_state_restored_revocations",
            "Revocations this process wrote back to a Redis that had lost them.",
            registry=registry,
        )
        self._state_up = Gauge(
            "proxy_state_up",
            "1 while the state backend answers, 0 while it fails (the least of the workers).",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self._state_unconfirmed = Gauge(
            "proxy_state_revocations_unconfirmed_seconds",
            "Seconds this process's copy of the revocations has gone unconfirmed, past the "
            "one-second bound (0 when current; +Inf before its first load).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._state_revocations = Gauge(
            "proxy_state_revocations",
            "Revocations in this process's copy.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._state: StateView | None = None
        self._state_seen: dict[int, int] = {}  # id(child) -> the count it has been given
        # Rule 3 for requests: (route, delivery, method, status) as given -> where it counts;
        # the counts, by their series' labels. In a worker of several: _written (rule 2).
        self._series: dict[tuple[str, str, str, int], _RequestSeries] = {}
        self._request_counts: dict[tuple[str, str, str, str], _Count] = {}
        self._route_counts: dict[tuple[str, str], _RouteCounts] = {}
        self._written: dict[tuple[str, str, str, int], _WrittenSeries] = {}
        self._caches: dict[str, tuple[CacheCounts, list[int]]] = {}
        self._gauges: list[tuple[Gauge, Callable[[], float]]] = []
        self._sampling = threading.Lock()  # a scrape thread and the event loop may both sample

    # -- the request path --------------------------------------------------------------------

    def observe_request(
        self,
        route: str | None,
        delivery: str | None,
        method: str,
        status: int,
        body_bytes: int,
        duration: float,
        ttfb: float,
    ) -> None:
        key = (route or UNMATCHED, delivery or NO_DELIVERY, method, status)
        series = self._series.get(key)
        if series is None:
            if self._written_out:
                self._write_request(key, body_bytes, duration, ttfb)
                return
            series = self._series_for(*key)
        series.requests.n += 1
        counts = series.route
        times = counts.duration
        times.buckets[bisect_left(_BOUNDS, duration)] += 1  # as _Observed picks the bucket
        times.sum += duration
        if series.delivered:
            times = counts.ttfb
            times.buckets[bisect_left(_BOUNDS, ttfb)] += 1
            times.sum += ttfb
            counts.body_bytes += body_bytes
            if series.not_modified:
                counts.not_modified += 1

    def _labels(
        self, route: str, delivery: str, method: str, status: int
    ) -> tuple[str, str, str, str]:
        """A request's (route, delivery, method, status class) labels."""
        # Rule 1: the request's method reaches a label only if it is one of a fixed few.
        shown_method = method if method in _METHODS else "other"
        shown_delivery = _DELIVERIES.get(delivery, NO_DELIVERY)
        return (route, shown_delivery, shown_method, f"{min(max(status // 100, 1), 5)}xx")

    def _series_for(self, route: str, delivery: str, method: str, status: int) -> _RequestSeries:
        labels = self._labels(route, delivery, method, status)
        requests = self._request_counts.get(labels)
        if requests is None:
            requests = _Count(_value(self._requests.labels(*labels)))
            self._request_counts[labels] = requests
        by_route = (route, labels[1])
        delivered = labels[1] != NO_DELIVERY
        counts = self._route_counts.get(by_route)
        if counts is None:
            counts = _RouteCounts(
                _Observed(self._duration.labels(*by_route)),
                _Observed(self._ttfb.labels(*by_route)) if delivered else None,
                _value(self._bytes.labels(*by_route)) if delivered else None,
            )
            self._route_counts[by_route] = counts
        not_modified = delivered and status == 304
        if not_modified and counts.not_modified_value is None:
            counts.not_modified_value = _value(self._not_modified.labels(*by_route))
        series = _RequestSeries(requests, counts, delivered, not_modified)
        if method in _METHODS:  # an odd method's series is made again, not remembered
            self._series[(route, delivery, method, status)] = series
        return series

    def _write_request(
        self, key: tuple[str, str, str, int], body_bytes: int, duration: float, ttfb: float
    ) -> None:
        """In a worker of several: the request is written out at once (rule 2)."""
        series = self._written.get(key)
        if series is None:
            series = self._written_series(*key)
        series.requests.inc(1)
        series.duration.observe(duration)
        if series.ttfb is not None:
            series.ttfb.observe(ttfb)
            series.body_bytes.inc(body_bytes)
            if series.not_modified is not None:
                series.not_modified.inc(1)

    def _written_series(
        self, route: str, delivery: str, method: str, status: int
    ) -> _WrittenSeries:
        labels = self._labels(route, delivery, method, status)
        by_route = (route, labels[1])
        delivered = labels[1] != NO_DELIVERY
        series = _WrittenSeries(
            requests=_value(self._requests.labels(*labels)),
            duration=_Observed(self._duration.labels(*by_route)),
            ttfb=_Observed(self._ttfb.labels(*by_route)) if delivered else None,
            body_bytes=_value(self._bytes.labels(*by_route)) if delivered else None,
            not_modified=_value(self._not_modified.labels(*by_route))
            if delivered and status == 304
            else None,
        )
        if method in _METHODS:  # an odd method's series is made again, not remembered
            self._written[(route, delivery, method, status)] = series
        return series

    def observe_s3(self, operation: str, outcome: str, seconds: float) -> None:
        if self._written_out:
            self._s3[(operation, outcome)].inc(1)
            self._s3_duration[operation].observe(seconds)
            return
        self._s3_calls[(operation, outcome)] += 1
        times = self._s3_times[operation]
        times.buckets[bisect_left(_BOUNDS, seconds)] += 1  # as _Observed picks the bucket
        times.sum += seconds

    def token_checked(self, kind: str, outcome: str) -> None:
        if self._written_out:
            self._tokens[(kind, outcome)].inc(1)
        else:
            self._token_counts[(kind, outcome)] += 1

    def multipart_step(self, step: str, status: int, part_urls: int = 0) -> None:
        """One multipart entry of the sign API answered with `status`, with its part URLs."""
        outcome = "ok" if status < 400 else "refused" if status < 500 else "failed"
        self._steps[(step, outcome)].inc()
        if part_urls:
            self._part_urls.inc(part_urls)

    def rate_limited(self, route: str | None, limit: str) -> None:
        self._rate_limited.labels(route or UNMATCHED, limit).inc()

    def stream_stopped(self, reason: str) -> None:
        """A stream cut short by the proxy; `reason` is one of STOP_REASONS."""
        self._streams_stopped[reason].inc()

    def config_reloaded(self, ok: bool) -> None:
        """For the reload path: count one attempt."""
        self._reloads["ok" if ok else "failed"].inc()

    # -- sampled numbers ---------------------------------------------------------------------

    def watch_cache(self, name: str, cache: CacheCounts) -> None:
        if name not in CACHES:
            raise ValueError(f"unknown cache {name!r}; one of {', '.join(CACHES)}")
        self._caches[name] = (cache, [cache.hits, cache.misses])

    def watch_pool(self, load: Callable[[], tuple[int, int]]) -> None:
        """`load()` -> (connections in use, requests waiting for one)."""
        self._gauges.append((self._pool_in_use, lambda: load()[0]))
        self._gauges.append((self._pool_waiting, lambda: load()[1]))

    def watch_streams(self, in_flight: Callable[[], int]) -> None:
        self._gauges.append((self._streams, in_flight))

    def watch_requests(self, in_flight: Callable[[], int]) -> None:
        self._gauges.append((self._in_flight, in_flight))

    def watch_state(self, state: StateView) -> None:
        """The state backend's counters and condition (one backend per process)."""
        self._state, self._state_seen = state, {}
        self._gauges.append((self._state_up, lambda: 1.0 if state.is_up() else 0.0))
        self._gauges.append((self._state_unconfirmed, lambda: state.stale_for() or 0.0))
        self._gauges.append((self._state_revocations, lambda: len(state.revoked)))

    def sample(self) -> None:
        """Carry the plainly kept numbers into their series."""
        with self._sampling:
            for name, (cache, seen) in self._caches.items():
                hits, misses = cache.hits, cache.misses
                if hits > seen[0]:
                    self._cache_hits[name].inc(hits - seen[0])
                if misses > seen[1]:
                    self._cache_misses[name].inc(misses - seen[1])
                seen[:] = [hits, misses]
            if self._state is not None:
                self._sample_state(self._state.counters)
            if not self._written_out:
                self._sample_s3()
                self._sample_requests()
            for gauge, read in self._gauges:
                gauge.set(read())

    def _sample_requests(self) -> None:
        # list() copies in one step: the event loop may add while a scrape thread reads.
        for count in list(self._request_counts.values()):
            count.value.set(count.n)
        for counts in list(self._route_counts.values()):
            counts.sample()
        for key, checks in list(self._token_counts.items()):
            self._tokens[key].set(checks)

    def _sample_s3(self) -> None:
        for key, calls in list(self._s3_calls.items()):  # one step: the loop may add
            self._s3[key].set(calls)
        for operation, times in self._s3_times.items():
            self._s3_duration[operation].set(times)

    def _sample_state(self, counters: Any) -> None:
        totals: dict[int, tuple[Any, int]] = {}  # id(child) -> (child, its count now)

        def add(child: Any, count: int) -> None:
            totals[id(child)] = (child, totals.get(id(child), (child, 0))[1] + count)

        # dict() copies in one step: the event loop may add a reason while a scrape thread reads.
        for reason, count in dict(counters.by_reason).items():
            start, _, rest = reason.partition(":")
            outcome = "skipped" if rest.strip() == "backing off" else "failed"
            add(self._state_errors[(STATE_OPERATIONS.get(start, "other"), outcome)], count)
        for decision, name in STATE_DECISIONS.items():
            add(self._state_decisions[decision], getattr(counters, name))
        add(self._state_restores, counters.restores)
        add(self._state_restored, counters.restored)
        for child_id, (child, count) in totals.items():
            grown = count - self._state_seen.get(child_id, 0)
            if grown > 0:
                child.inc(grown)
            self._state_seen[child_id] = count

    async def sample_periodically(self) -> None:
        """In a worker of several: another process renders, so numbers must be written out."""
        while True:
            await asyncio.sleep(_SAMPLE_EVERY)
            self.sample()

    # -- output ------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition: this process's, or every worker's."""
        self.sample()
        directory = multiprocess.directory()
        if directory is not None:
            return render_directory(directory)
        return generate_latest(self.registry)

    def collect(self) -> Iterable[Metric]:
        self.sample()
        return self.registry.collect()


def _live_gauge(name: str, documentation: str, registry: CollectorRegistry) -> Gauge:
    """A gauge that, across workers, is the sum over the live ones."""
    return Gauge(name, documentation, registry=registry, multiprocess_mode="livesum")


def render_directory(directory: str) -> bytes:
    """Every worker's numbers, summed, from prometheus_client's multiprocess files."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def summary(families: Iterable[Metric]) -> dict[str, Any]:
    """The numbers the demo page and `bench` compare, from parsed or collected series.

    The same shape the earlier JSON endpoint had: requests, S3 calls, object-cache hits, and
    per delivery method the requests, body bytes, 304s and mean time to first byte; with its
    sum too, so that two readings give the mean between them (the demo's per-view numbers).
    """
    totals: dict[str, float] = {"requests": 0, "s3_requests": 0, "cache_hits": 0}
    statuses: dict[str, float] = {}
    by: dict[str, dict[str, float]] = {}

    def method(labels: Mapping[str, str]) -> dict[str, float]:
        return by.setdefault(
            labels["delivery"],
            {"requests": 0, "bytes_sent": 0, "not_modified": 0, "ttfb_sum": 0, "ttfb_count": 0},
        )

    for family in families:
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "proxy_requests_total":
                totals["requests"] += value
                statuses[labels["status_class"]] = statuses.get(labels["status_class"], 0) + value
                if labels["delivery"] != NO_DELIVERY:
                    method(labels)["requests"] += value
            elif name == "proxy_s3_requests_total":
                totals["s3_requests"] += value
            elif name == "proxy_cache_hits_total" and labels["cache"] == "object":
                totals["cache_hits"] += value
            elif name == "proxy_response_body_bytes_total":
                method(labels)["bytes_sent"] += value
            elif name == "proxy_not_modified_responses_total":
                method(labels)["not_modified"] += value
            elif name == "proxy_time_to_first_byte_seconds_sum":
                method(labels)["ttfb_sum"] += value
            elif name == "proxy_time_to_first_byte_seconds_count":
                method(labels)["ttfb_count"] += value
    by_delivery = {}
    for delivery, stats in sorted(by.items()):
        count = stats.pop("ttfb_count")
        mean = stats["ttfb_sum"] / count if count else None
        ttfb_sum = stats.pop("ttfb_sum")
        by_delivery[delivery] = {
            **{key: int(value) for key, value in stats.items()},
            "mean_ttfb_ms": round(mean * 1000, 3) if mean is not None else None,
            "ttfb_ms_sum": round(ttfb_sum * 1000, 3),
        }
    return {
        **{key: int(value) for key, value in totals.items()},
        "statuses": {key: int(value) for key, value in sorted(statuses.items())},
        "by_delivery": by_delivery,
    }
