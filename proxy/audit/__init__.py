"""The audit trail: who got what, one tamper-evident JSON line per event.

One face for the rest of the proxy: `AuditTrail` writes (trail.py), `seal`/`check_line` are the
hash chain (chain.py, no I/O), `verify_files` checks files (verify.py, for the CLI). What an
event holds is decided by the request value that records it; nothing else writes audit lines.
"""

from .chain import check_line, seal
from .trail import STDOUT, AuditFileBusy, AuditTrail, record_from_command_line, worker_path
from .verify import ChainBroken, verify_file, verify_files

__all__ = [
    "STDOUT",
    "AuditFileBusy",
    "AuditTrail",
    "ChainBroken",
    "check_line",
    "record_from_command_line",
    "seal",
    "verify_file",
    "verify_files",
    "worker_path",
]
