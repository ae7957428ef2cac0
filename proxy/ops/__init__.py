"""Operating the proxy: health probes and Prometheus metrics. What the rest of the proxy uses
is named here; the modules behind it are this package's own business.

- health.py: liveness, and readiness checks shared by concurrent probes.
- metrics.py: the series, counted on the request path, rendered by prometheus_client.
- measured.py: a Storage wrapper that times and counts S3 calls.
- listener.py: metrics on an address of their own (`metrics.listen`).
- multiprocess.py: one set of numbers across `listen.workers` processes.
"""

from .health import Check, Readiness, live_response, ready_response, storage_checks
from .listener import MetricsListener
from .measured import MeasuredStorage
from .metrics import CONTENT_TYPE, Telemetry, render_directory, summary
from .multiprocess import directory as multiprocess_directory
from .multiprocess import enter_worker, shared_directory, worker_exited

__all__ = [
    "CONTENT_TYPE",
    "Check",
    "MeasuredStorage",
    "MetricsListener",
    "Readiness",
    "Telemetry",
    "enter_worker",
    "live_response",
    "multiprocess_directory",
    "ready_response",
    "render_directory",
    "shared_directory",
    "storage_checks",
    "summary",
    "worker_exited",
]
