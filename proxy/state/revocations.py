"""Revocations as values, and the in-memory list every request is checked against. No I/O.

Rules:
1. A subject revocation is keyed by (iss, sub), as tokens are identified everywhere else in
   the proxy. Without an issuer it covers that `sub` of every issuer: revoking too much is
   the safe mistake, and with one issuer it is what an operator means.
2. It covers the tokens issued at or before the moment of revocation (by `iat`; a token
   without `iat` counts as issued before). A token issued later, a fresh sign-in, passes.
3. A jti revocation covers the one token or share link carrying that `jti`. Share links are
   revoked only by jti: a subject revocation is about sign-ins, and a link is not one.
4. Every entry expires on its own once no token it covers can still be valid, so the list
   never grows without bound; and a revoked token is never accepted again, whatever claims
   it lacks. That needs every token's lifetime bounded and known: a token must carry `iat`
   and `exp` with `exp - iat` at most `revocation.max_token_lifetime` (links: at most
   LINK_MAX_LIFETIME), and is refused otherwise. Both stamps come from the issuer's clock,
   so the difference needs no leeway. A token without `iat` could have been issued at any
   time before any revocation with any `exp`; one without `exp` never expires: either would
   outlive the entry that covers it.
5. The arithmetic of rule 4, with `leeway` the allowed clock skew: a subject entry covers
   tokens with `iat <= revoked_at`, so `exp <= revoked_at + lifetime`, accepted until
   `exp + leeway`: the entry lasts `lifetime + leeway`. A jti entry covers a token whatever
   its `iat`; one that existed at the revocation has `iat <= revoked_at + leeway` (an
   issuer's clock ahead of ours), so it lasts `lifetime + 2 * leeway`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

# The longest share link `python -m proxy link` mints (the SigV4 maximum, 7 days).
LINK_MAX_LIFETIME = 604800
Kind = Literal["sub", "jti"]


@dataclass(frozen=True)
class Revocation:
    kind: Kind
    value: str  # the sub, or the jti
    iss: str | None  # sub only; None: that sub of every issuer
    revoked_at: float
    expires_at: float

    @property
    def id(self) -> str:
        """The entry's identity: revoking the same thing again replaces it."""
        return entry_id(self.kind, self.value, self.iss)

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {self.kind: self.value}
        if self.kind == "sub":
            shown["iss"] = self.iss
        shown["revoked_at"] = self.revoked_at
        shown["expires_at"] = self.expires_at
        return shown

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | bytes) -> Revocation:
        """Parse what `dumps` wrote; ValueError for anything else."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        kind: Kind = "sub" if "sub" in data else "jti"
        value, iss = data.get(kind), data.get("iss")
        revoked_at, expires_at = data.get("revoked_at"), data.get("expires_at")
        if not isinstance(value, str) or not (iss is None or isinstance(iss, str)):
            raise ValueError("bad sub, jti or iss")
        if not _is_number(revoked_at) or not _is_number(expires_at):
            raise ValueError("bad times")
        return cls(kind, value, iss if kind == "sub" else None, revoked_at, expires_at)


def entry_id(kind: Kind, value: str, iss: str | None = None) -> str:
    return json.dumps([kind, iss if kind == "sub" else None, value])


def new_revocation(
    kind: Kind,
    value: str,
    iss: str | None,
    now: float,
    max_token_lifetime: int,
    leeway: float,
    ttl: float | None = None,
) -> Revocation:
    """A revocation made now that lasts `ttl` seconds, or as long as anything it covers can
    still be valid (rules 4 and 5)."""
    if ttl is None:
        if kind == "sub":
            ttl = max_token_lifetime + leeway
        else:
            ttl = max(max_token_lifetime, LINK_MAX_LIFETIME) + 2 * leeway
    return Revocation(kind, value, iss if kind == "sub" else None, now, now + ttl)


class RevocationList:
    """The revocations in force, indexed for one dict lookup or two per request.
    `on_added` is called after every change that may revoke something (an entry added, the
    list replaced), so that what is already running can look again."""

    def __init__(
        self, entries: Iterable[Revocation] = (), on_added: Callable[[], None] | None = None
    ) -> None:
        self._subjects: dict[tuple[str | None, str], Revocation] = {}
        self._jtis: dict[str, Revocation] = {}
        self._on_added = on_added
        self._index(entries)

    def __len__(self) -> int:
        return len(self._subjects) + len(self._jtis)

    def replace(self, entries: Iterable[Revocation]) -> None:
        self._index(entries)
        if self._on_added is not None:
            self._on_added()

    def _index(self, entries: Iterable[Revocation]) -> None:
        subjects: dict[tuple[str | None, str], Revocation] = {}
        jtis: dict[str, Revocation] = {}
        for entry in entries:
            if entry.kind == "sub":
                subjects[(entry.iss, entry.value)] = entry
            else:
                jtis[entry.value] = entry
        self._subjects, self._jtis = subjects, jtis

    def add(self, entry: Revocation) -> None:
        if entry.kind == "sub":
            self._subjects[(entry.iss, entry.value)] = entry
        else:
            self._jtis[entry.value] = entry
        if self._on_added is not None:
            self._on_added()

    def remove(self, kind: Kind, value: str, iss: str | None = None) -> bool:
        if kind == "sub":
            return self._subjects.pop((iss, value), None) is not None
        return self._jtis.pop(value, None) is not None

    def remove_id(self, found: str) -> bool:
        """Remove the entry with this `Revocation.id`."""
        try:
            kind, iss, value = json.loads(found)
        except (ValueError, TypeError):
            return False
        return self.remove("jti" if kind == "jti" else "sub", str(value), iss)

    def entries(self, now: float) -> list[Revocation]:
        """The entries still in force, oldest first; expired ones are dropped."""
        live = [e for e in (*self._subjects.values(), *self._jtis.values()) if now < e.expires_at]
        if len(live) != len(self):
            self._index(live)  # only dropped: nothing newly revoked
        return sorted(live, key=lambda e: e.revoked_at)

    def covers(self, claims: Mapping[str, Any], now: float, link: bool = False) -> bool:
        """True if these (verified) claims belong to a revoked token or link."""
        if not self._subjects and not self._jtis:
            return False  # the usual case, and the hot path
        jti = claims.get("jti")
        if isinstance(jti, str):
            entry = self._jtis.get(jti)
            if entry is not None and now < entry.expires_at:
                return True
        sub = claims.get("sub")
        if link or sub is None or not self._subjects:
            return False
        iss = claims.get("iss")
        iat = claims.get("iat")
        for key in ((None if iss is None else str(iss), str(sub)), (None, str(sub))):
            entry = self._subjects.get(key)
            if entry is None or now >= entry.expires_at:
                continue
            if not _is_number(iat) or iat <= entry.revoked_at:
                return True
        return False


def lifetime_refusal(claims: Mapping[str, Any], longest: float) -> str | None:
    """Why a token whose lifetime is unknown or longer than revocations last is refused
    (rule 4), or None."""
    exp, iat = claims.get("exp"), claims.get("iat")
    if not _is_number(exp):
        return "token without exp (revocation.max_token_lifetime needs it)"
    if not _is_number(iat):
        return "token without iat (revocation.max_token_lifetime needs it)"
    if exp - iat > longest:
        return "token lifetime exceeds revocation.max_token_lifetime"
    return None


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
