"""Writes the audit trail: one sealed JSON line per event, appended and flushed at once.

Rules:
1. Each event is one `write()` of one whole line to a file opened for appending, unbuffered:
   in the file before `record()` returns, so a crash loses no event already recorded; and no
   two writers' lines interleave mid-line (with several workers each has a file of its own,
   `.wN` before the suffix; on stdout each line names its `worker`, each worker a chain).
2. A chain goes on across restarts: opening a file that has lines continues from its last
   hash. A torn last line (a crash mid-write) is left as it is, for `verify` to name.
3. Rotation keeps the chain: past `max_bytes` the file is renamed with a UTC timestamp and a
   new one starts with an `audit.rotated` line naming the old file and its last hash. On
   SIGHUP (`reopen()`), a file that was moved away (logrotate) is followed the same way.
4. Writing never fails a request: an I/O error is reported once on stderr (the diagnostics),
   the event is lost, and the gap shows as a break in the chain.
It never decides what an event holds (the request value does) and never reads the network.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from ..accesslog import timestamp
from .chain import hash_of, seal_line

log = logging.getLogger("proxy.audit")

STDOUT = "-"
_TAIL = 64 * 1024  # how far back from the end a file's last line is looked for


def worker_path(path: Path, worker: int | str | None) -> Path:
    """The file one writer of several writes: worker 2's audit.jsonl is audit.w2.jsonl, the
    command line's (`revoke` against Redis) audit.cli.jsonl."""
    if worker is None:
        return path
    name = f"w{worker}" if isinstance(worker, int) else worker
    return path.with_name(f"{path.stem}.{name}{path.suffix}")


COMMAND_LINE = "cli"


def record_from_command_line(path: str, event: str, fields: Mapping[str, Any]) -> None:
    """One event from a command-line process, in a file of its own beside the servers'
    (audit.cli.jsonl; stdout when the path is "-"), under an exclusive lock held from reading
    the chain's last hash to writing the line: two commands at once still make one chain."""
    trail = AuditTrail(path, worker=None if path == STDOUT else COMMAND_LINE, lock=True)
    trail.open()
    try:
        trail.record(event, fields)
    finally:
        trail.close()


class AuditUnavailable(Exception):
    """The audit file cannot be opened for writing: the proxy does not start without it."""


class AuditFileBusy(AuditUnavailable):
    """The audit file is held by another process writing its own chain into it."""


_worker: int | None = None  # this process's number among several workers (enter_worker)


def enter_worker(number: int) -> None:
    """In a worker of several, before its Gateway is made: its trail is a file of its own."""
    global _worker
    _worker = number


def this_worker() -> int | None:
    """This process's worker number, or None when it is the only one."""
    return _worker


class AuditTrail:
    """The audit file of this process (or stdout). `open()` before `record()`."""

    def __init__(
        self,
        path: str,
        max_bytes: int = 0,
        worker: int | str | None = None,
        clock: Callable[[], float] = time.time,
        lock: bool = False,
    ) -> None:
        """`worker`: this process's number among several (or COMMAND_LINE): its own file, or
        on stdout a `worker` field naming its chain. The file is locked while open: with
        `lock` the lock is waited for (short-lived writers that may run at once); without, a
        file another process holds is refused (AuditFileBusy)."""
        self._stdout = path == STDOUT
        self.path = Path(path) if self._stdout else worker_path(Path(path), worker)
        self._max_bytes = max_bytes if not self._stdout else 0
        self._worker = worker
        self._lock = lock
        self._clock = clock
        self._file: BinaryIO | None = None
        self._size = 0
        self._last: str | None = None  # the hash the next line chains to
        self._failing = False

    # --- life cycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Open the file (continuing its chain), or raise AuditUnavailable saying why not."""
        if self._stdout:
            self._file = sys.stdout.buffer
            return
        try:
            self._open_file()
        except OSError as exc:
            raise AuditUnavailable(
                f"audit.path: cannot open {self.path} for appending ({exc.strerror or exc})"
            ) from None

    def close(self) -> None:
        if self._file is not None and not self._stdout:
            with contextlib.suppress(OSError):
                self._file.close()
        self._file = None

    def reopen(self) -> None:
        """SIGHUP: if the file was moved or removed (logrotate), go on in a new one at the
        configured path, chained to the old one's last line."""
        if self._stdout or self._file is None:
            return
        try:
            moved = not os.path.samestat(os.stat(self.path), os.fstat(self._file.fileno()))
        except FileNotFoundError:
            moved = True
        except OSError as exc:
            log.error("audit: cannot check %s (%s)", self.path, exc.strerror)
            return
        if moved:
            log.info("audit: %s was moved; continuing the chain in a new file", self.path)
            self._start_new_file(previous=None)

    # --- writing --------------------------------------------------------------------------

    def record(self, event: str, fields: Mapping[str, Any]) -> None:
        """Append one event: `time` and `event` first, then `fields` in their order."""
        line = self.start(event)
        line.update(fields)
        self.append(line)

    def start(self, event: str) -> dict[str, Any]:
        """A new line's first fields (`time`, `event`), for `append` once it is filled in."""
        line: dict[str, Any] = {"time": timestamp(self._clock()), "event": event}
        if self._worker is not None and self._stdout:
            line["worker"] = self._worker
        return line

    def append(self, line: dict[str, Any]) -> None:
        """Seal a line made by `start` (it gets its `prev`) and write it."""
        if self._file is None:
            return
        line["prev"] = self._last
        data, digest = seal_line(line, b"\n")
        if self._max_bytes and self._size and self._size + len(data) > self._max_bytes:
            self._rotate()
            if self._file is None:
                return
            line["prev"] = self._last
            data, digest = seal_line(line, b"\n")
        try:
            if self._stdout:
                sys.stdout.flush()  # the access log's pending lines first, whole
                self._file.write(data)
                self._file.flush()
            elif self._file.write(data) != len(data):  # unbuffered: one write() system call
                raise OSError(0, "short write (disk full?)")
        except (OSError, ValueError) as exc:
            self._failed(exc)
            return
        self._size += len(data)
        self._last = digest
        if self._failing:
            self._failing = False
            log.warning("audit: writing to %s again", self._where)

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            reason = getattr(exc, "strerror", None) or str(exc)
            log.error("audit: cannot write to %s (%s); events are being lost", self._where, reason)

    @property
    def _where(self) -> str:
        return "stdout" if self._stdout else str(self.path)

    # --- files ----------------------------------------------------------------------------

    def _open_file(self) -> None:
        # Unbuffered: each event is one write() of its whole line, in the file as it returns.
        file = self.path.open("ab", buffering=0)
        try:
            # Two processes appending to one file would fork its chain: a server refuses to
            # share its file; a command line waits its turn.
            fcntl.flock(
                file.fileno(), fcntl.LOCK_EX if self._lock else fcntl.LOCK_EX | fcntl.LOCK_NB
            )
        except BlockingIOError:
            file.close()
            raise AuditFileBusy(
                f"audit.path: {self.path} is being written by another process; give each "
                "process (each replica on this machine) a file of its own"
            ) from None
        self._file = file
        self._size = os.fstat(file.fileno()).st_size
        self._last = None
        if self._size:
            self._last, whole = _last_line(self.path)
            if not whole:
                # End the torn line, so that the next one starts on a line of its own.
                file.write(b"\n")
                file.flush()
                self._size += 1

    def _rotate(self) -> None:
        """Rename the full file aside, then start a new one that names it."""
        now = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.{now}Z")
        for number in range(1, 1000):
            if not aside.exists():
                break
            aside = self.path.with_name(f"{self.path.name}.{now}Z-{number}")
        try:
            os.rename(self.path, aside)
        except OSError as exc:
            # Go on in the full file rather than lose events, and stop trying each event.
            self._max_bytes = 0
            log.error(
                "audit: cannot rename %s aside (%s); size rotation is off until restart",
                self.path,
                exc.strerror,
            )
            return
        self._start_new_file(previous=aside.name)

    def _start_new_file(self, previous: str | None) -> None:
        last = self._last
        self.close()
        try:
            self._open_file()
        except (OSError, AuditUnavailable) as exc:
            self._failed(exc)
            return
        if self._size == 0:
            # A new file: its first line joins it to the chain it continues.
            self._last = last
            self.record("audit.rotated", {"previous": previous})


def _last_line(path: Path) -> tuple[str | None, bool]:
    """The hash of a file's last line, and whether that line is whole (ends in a newline).
    None if it is torn or not an audit line: the line written next then starts a chain, and
    `verify` names the torn one."""
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        size = file.tell()
        file.seek(max(0, size - _TAIL))
        tail = file.read()
    if not tail.endswith(b"\n"):
        return None, False
    return hash_of(tail[:-1].rsplit(b"\n", 1)[-1]), True
