"""What a benchmark run found: filled in by the runner, rendered by the report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .backends import LARGE_SIZE
from .load import DownloadsResult, TtfbResult, WrkResult

SMALL_STREAM = "10 KiB GET, stream"
SMALL_REDIRECT = "10 KiB GET, redirect"
LARGE = "100 MiB GET"

# Row labels, shared by the runner and the report.
DIRECT = "direct (nginx static)"
NGINX = "nginx proxy_pass"
NAIVE = "naive aiohttp proxy"
BOTO = "aiobotocore proxy"
BARE = "bare 302 (aiohttp)"
PROXY_STREAM = "s3-private-proxy /s/ (stream)"
PROXY_BOTO_ENGINE = "s3-private-proxy /s/ (stream, s3.engine aiobotocore)"
PROXY_CACHED = "s3-private-proxy /c/ (stream, cache max_age 5)"
PROXY_REDIRECT = "s3-private-proxy /r/ (redirect)"
PROXY_AUDIT = "s3-private-proxy /s/ (stream, audit trail on)"
PROXY = "s3-private-proxy"


def at_baseline(label: str) -> str:
    """The label of the same row measured on the `--baseline` commit."""
    return f"{label} [baseline]"


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


@dataclass(frozen=True)
class Sample:
    """One wrk run and the server's CPU time during it."""

    wrk: WrkResult
    cpu_s: float
    # During the run: CPU time of user-space processes outside the benchmark, and time the
    # hypervisor stole from the server's CPU.
    foreign_s: float = math.nan
    steal_s: float = math.nan


@dataclass
class Row:
    label: str
    samples: list[Sample] = field(default_factory=list)
    skipped: str | None = None  # why nothing was measured

    def _median(self, value: Callable[[Sample], float]) -> float:
        return median([value(s) for s in self.samples])

    @property
    def measured(self) -> bool:
        return bool(self.samples)

    @property
    def rps(self) -> float:
        return self._median(lambda s: s.wrk.rps)

    @property
    def mb_per_s(self) -> float:
        return self._median(lambda s: s.wrk.mb_per_s)

    @property
    def cpu_us_per_request(self) -> float:
        return self._median(
            lambda s: s.cpu_s / s.wrk.requests * 1e6 if s.wrk.requests else math.nan
        )

    @property
    def cpu_ms_per_large_object(self) -> float:
        """CPU per 100 MiB moved (bytes, not completed requests: a 5 s run completes few)."""
        return self._median(
            lambda s: s.cpu_s / (s.wrk.bytes / LARGE_SIZE) * 1e3 if s.wrk.bytes else math.nan
        )

    @property
    def busy(self) -> float:
        """The server's CPU time over the run's wall time: 1.0 is one core fully used. Well
        below 1.0 (for a one-core server), something else was the bottleneck."""
        return self._median(lambda s: s.cpu_s / s.wrk.duration_s if s.wrk.duration_s else math.nan)

    @property
    def p50_ms(self) -> float:
        return self._median(lambda s: s.wrk.p50_ms)

    @property
    def p99_ms(self) -> float:
        return self._median(lambda s: s.wrk.p99_ms)

    @property
    def errors(self) -> int:
        """wrk socket errors and non-2xx/3xx answers, summed over all runs."""
        return sum(s.wrk.error_count + s.wrk.non_2xx_3xx for s in self.samples)

    def spread(self, value: Callable[[Sample], float]) -> float:
        """(max - min) / median over the runs, as a fraction; nan with one run."""
        values = [value(s) for s in self.samples]
        mid = median(values)
        if len(values) < 2 or not mid:
            return math.nan
        return (max(values) - min(values)) / mid


@dataclass
class TtfbRow:
    label: str
    small: list[TtfbResult] = field(default_factory=list)
    large: list[TtfbResult] = field(default_factory=list)
    small_skipped: str | None = None
    large_skipped: str | None = None


@dataclass(frozen=True)
class RssRun:
    baseline_kib: int
    hwm_kib: int
    downloads: DownloadsResult


@dataclass
class RssRow:
    label: str
    runs: list[RssRun] = field(default_factory=list)
    skipped: str | None = None

    @property
    def hwm_mib(self) -> float:
        return median([r.hwm_kib / 1024 for r in self.runs])

    @property
    def baseline_mib(self) -> float:
        return median([r.baseline_kib / 1024 for r in self.runs])

    @property
    def capped(self) -> bool:
        return any(r.downloads.stopped_at_cap for r in self.runs)


@dataclass
class Scaling:
    status: str = "not run"  # "measured", "not supported yet: ...", "not run: ..."
    one: Row = field(default_factory=lambda: Row("1 worker, pinned to CPU 0"))
    two: Row = field(default_factory=lambda: Row("2 workers, not pinned"))

    @property
    def ratio(self) -> float:
        if not (self.one.measured and self.two.measured) or not self.one.rps:
            return math.nan
        return self.two.rps / self.one.rps


@dataclass(frozen=True)
class Settings:
    """How the run was made, for the report's method section."""

    quick: bool
    runs: int
    small_seconds: int
    large_seconds: int
    warmup_seconds: int
    small_connections: int
    large_connections: int
    ttfb_small_samples: int
    ttfb_large_samples: int
    downloads: int
    downloads_bound_s: float
    rss_cap_mib: int
    server_cpu: str
    load_cpu: str
    backend_cpu: str
    proxy_overrides: list[str]


@dataclass
class Results:
    settings: Settings
    facts: list[tuple[str, str]] = field(default_factory=list)
    tables: dict[str, dict[str, Row]] = field(default_factory=dict)
    ttfb: dict[str, TtfbRow] = field(default_factory=dict)
    rss: dict[str, RssRow] = field(default_factory=dict)
    scaling: Scaling = field(default_factory=Scaling)
    incidents: list[str] = field(default_factory=list)
    proxy_log: list[str] = field(default_factory=list)  # summary lines of the proxy's own log
    baseline: str = ""  # the --baseline commit's label, when one was measured
    proxy_config: str = ""  # the generated YAML of the main proxy instance (no secrets in it)
    phases: list[tuple[str, float]] = field(default_factory=list)
    total_s: float = 0.0

    def row(self, table: str, label: str) -> Row:
        return self.tables.setdefault(table, {}).setdefault(label, Row(label))
