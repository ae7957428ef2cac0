"""The audit trail: who got what, one tamper-evident JSON line per event.

One face for the rest of the proxy: `AuditTrail` writes (trail.py), `seal`/`check_line` are the
hash chain (chain.py, no I/O), `write_request_events` turns an ended request's RequestContext
into its lines (events.py), `verify_files` checks files (verify.py, for the CLI). Surfaces
record events on the RequestContext (`context.audit(...)`); nothing else writes audit lines.
"""

from .chain import check_line, seal
from .events import DENIED, request_events, write_request_events
from .trail import (
    STDOUT,
    AuditFileBusy,
    AuditTrail,
    AuditUnavailable,
    enter_worker,
    record_from_command_line,
    this_worker,
    worker_path,
)
from .verify import ChainBroken, verify_file, verify_files

__all__ = [
    "DENIED",
    "STDOUT",
    "AuditFileBusy",
    "AuditTrail",
    "AuditUnavailable",
    "ChainBroken",
    "check_line",
    "enter_worker",
    "record_from_command_line",
    "request_events",
    "seal",
    "this_worker",
    "verify_file",
    "verify_files",
    "worker_path",
    "write_request_events",
]
