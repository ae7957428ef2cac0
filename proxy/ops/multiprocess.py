"""Metrics across worker processes: prometheus_client's multiprocess mode, in a private
directory the supervisor makes before forking and removes at exit.

Each worker writes its numbers to files of its own there; whoever renders (the supervisor's
metrics listener, or any worker asked on the main port) sums all of them, so a scrape sees
one target. A worker that exits keeps its counters (they must not go backwards) but its gauges
are dropped (`mark_process_dead`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

ENV = "PROMETHEUS_MULTIPROC_DIR"
_directory: str | None = None  # set in a worker of several, by enter_worker()


def directory() -> str | None:
    """The shared directory when this process is one of several workers, else None."""
    return _directory


@contextlib.contextmanager
def shared_directory() -> Iterator[str]:
    """In the supervisor: a private directory for the workers' files, for their lifetime."""
    path = tempfile.mkdtemp(prefix="proxy-metrics-")
    previous = os.environ.get(ENV)
    os.environ[ENV] = path  # documented by prometheus_client; inherited by the workers
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def enter_worker(path: str) -> None:
    """In a freshly forked worker, before any series is made: write values to `path`.

    prometheus_client chooses how values are stored when it is first imported, which in the
    supervisor happened before the directory existed; so the choice is made again here.
    """
    global _directory
    from prometheus_client import values

    os.environ[ENV] = path
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _directory = path


def worker_exited(path: str, pid: int) -> None:
    """In the supervisor, when a worker is gone: drop its live gauges, keep its counters."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
