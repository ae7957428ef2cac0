"""The audit trail's hash chain: sealing one line and checking one line. No I/O.

Rules:
1. A line is one JSON object whose last two fields are `prev` (the `hash` of the line before
   it in the same chain, or null where a chain starts) and `hash`: the SHA-256 of the line's
   own bytes as written, up to and including `prev`, with the closing brace. So editing any
   byte of a line breaks that line's own hash, and removing or reordering lines breaks the
   `prev` of the line after.
2. Hashes are taken over the bytes as written, never over a re-encoding: a checker needs no
   canonical JSON, and `grep` keeps lines intact.
3. The chain proves order and integrity against edits that do not recompute every later
   hash; anyone with write access can recompute them. What anchors it is a hash kept
   elsewhere: the next file's first line after a rotation, or a hash copied off the machine
   (docs/operations.md, "Audit trail").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

_HASH_FIELD = b',"hash":"'
# `,"hash":"<64 hex>"}` ends every sealed line.
_SUFFIX = re.compile(rb',"hash":"([0-9a-f]{64})"\}$')
_SUFFIX_LENGTH = len(_HASH_FIELD) + 64 + 2


def seal(fields: Mapping[str, Any], prev: str | None) -> tuple[bytes, str]:
    """The line (no newline) for `fields`, chained after `prev`, and its hash."""
    return seal_line({**fields, "prev": prev})


def seal_line(line: Mapping[str, Any], end: bytes = b"") -> tuple[bytes, str]:
    """The bytes of `line`, whose last field is already `prev`, sealed with its hash (then
    `end`); and the hash. One encoding, one hash, one join: it runs once per event."""
    body = orjson.dumps(line)
    digest = hashlib.sha256(body).hexdigest()
    return b"".join((body[:-1], _HASH_FIELD, digest.encode(), b'"}', end)), digest


def hash_of(line: bytes) -> str | None:
    """The `hash` a sealed line claims (unchecked), or None if it is not a sealed line."""
    found = _SUFFIX.search(line)
    return found.group(1).decode() if found else None


@dataclass(frozen=True)
class Checked:
    """One line read back: its fields (with `prev`) and its hash, which it was checked to
    match; or `problem`, saying why it is not a sound sealed line."""

    fields: dict[str, Any]
    hash: str = ""
    problem: str | None = None


def check_line(line: bytes) -> Checked:
    """Check that a line (without its newline) is sealed and its own hash matches it."""
    claimed = hash_of(line)
    if claimed is None:
        return Checked({}, problem="not an audit line (no hash at its end)")
    body = line[:-_SUFFIX_LENGTH] + b"}"
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Checked({}, problem="not a JSON object")
    if not isinstance(fields, dict) or "prev" not in fields:
        return Checked({}, problem="not an audit line (no prev)")
    if hashlib.sha256(body).hexdigest() != claimed:
        return Checked(fields, problem="its hash does not match its content (the line was edited)")
    prev = fields["prev"]
    if prev is not None and not (isinstance(prev, str) and re.fullmatch("[0-9a-f]{64}", prev)):
        return Checked(fields, problem="its prev is not a hash")
    return Checked(fields, claimed)
