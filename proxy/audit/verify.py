"""`python -m proxy audit verify FILE...`: check audit files' hash chains, naming the first
line that breaks one. Reads files only; never writes or repairs them.

A file holds one chain, or one per `worker` (the lines of several workers on one stdout).
Its first line may start a chain (`prev` null) or continue one from before: after a rotation
that line is `audit.rotated`, naming the previous file; when that file is among those given,
its last hash must be the one named. Any other chain whose first line names a `prev` has lost
the lines before it (cut off the top of the file), and is broken there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .chain import check_line


class ChainBroken(Exception):
    """Where a chain breaks: `FILE:LINE: what`."""

    def __init__(self, path: Path, line: int, problem: str) -> None:
        self.path, self.line, self.problem = path, line, problem
        super().__init__(f"{path}:{line}: {problem}")


@dataclass
class FileChains:
    """One file, checked: how many audit lines, and per chain its first `prev` and last hash."""

    path: Path
    events: int = 0
    skipped: int = 0  # lines that are not audit lines (with `mixed`)
    first_prev: dict[object, str | None] = field(default_factory=dict)
    last: dict[object, str] = field(default_factory=dict)
    previous_file: str | None = None  # named by a first line `audit.rotated`


def verify_file(path: Path, mixed: bool = False) -> FileChains:
    """Check every line of `path`; raise ChainBroken at the first that breaks its chain.
    `mixed`: skip lines that are not audit lines (the access log's, on a shared stdout)."""
    found = FileChains(path)
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.endswith(b"\n"):
                raise ChainBroken(path, number, "torn line (no newline: a write was cut short)")
            line = raw[:-1]
            if mixed and not _looks_audited(line):
                found.skipped += 1
                continue
            checked = check_line(line)
            if checked.problem is not None:
                raise ChainBroken(path, number, checked.problem)
            chain = checked.fields.get("worker")
            prev = checked.fields["prev"]
            if chain in found.last:
                if prev != found.last[chain]:
                    raise ChainBroken(
                        path,
                        number,
                        "its prev is not the hash of the line before it (a line before it was "
                        "removed, inserted or reordered)",
                    )
            else:
                rotated = found.events == 0 and checked.fields.get("event") == "audit.rotated"
                if prev is not None and not rotated:
                    # The writer starts every chain with prev null, or continues one in a new
                    # file with `audit.rotated` first: lines before this one were removed.
                    raise ChainBroken(
                        path,
                        number,
                        "its prev names a line that is not in this file, and it is not a "
                        "rotated file's first line (the lines before it were removed)",
                    )
                found.first_prev[chain] = prev
                if rotated:
                    previous = checked.fields.get("previous")
                    found.previous_file = previous if isinstance(previous, str) else None
            found.last[chain] = checked.hash
            found.events += 1
    return found


def _looks_audited(line: bytes) -> bool:
    """An audit line has `event` and `hash`; an access line has neither."""
    try:
        fields = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(fields, dict) and ("hash" in fields or "event" in fields)


def verify_files(paths: Sequence[Path], mixed: bool = False) -> list[str]:
    """Check each file and the joins between them; the report, one line a file. Raises
    ChainBroken at the first break (OSError if a file cannot be read)."""
    checked = [verify_file(path, mixed) for path in paths]
    by_name = {found.path.name: found for found in checked}
    report = []
    for found in checked:
        start = _describe_start(found, by_name)
        skipped = f", {found.skipped} other lines skipped" if found.skipped else ""
        chains = f" in {len(found.last)} chains" if len(found.last) > 1 else ""
        report.append(f"{found.path}: {found.events} events{chains}, chain intact{start}{skipped}")
    return report


def _describe_start(found: FileChains, by_name: dict[str, FileChains]) -> str:
    if found.events == 0:
        return ""
    if found.previous_file is not None and found.previous_file in by_name:
        previous = by_name[found.previous_file]
        prev = found.first_prev.get(None)
        if prev not in previous.last.values():
            raise ChainBroken(
                found.path,
                1,
                f"it continues {found.previous_file}, but that file's last hash is not its prev "
                "(the end of that file was changed)",
            )
        return f"; continues {found.previous_file}"
    starts = [prev for prev in found.first_prev.values() if prev is not None]
    if not starts:
        return ""
    if found.previous_file is not None:
        return f"; continues {found.previous_file} (not given), after {starts[0][:16]}..."
    return f"; continues a chain from before it, after {starts[0][:16]}..."
