"""CloudFront policy statements: build canned and custom policies, read one back, match a
Resource with wildcards, and CloudFront's URL-safe base64. No I/O, no keys.

The rules, as CloudFront documents them:

1. A canned policy is never sent: both sides rebuild it from the URL and `Expires`, so its
   JSON must be byte for byte the documented form (no spaces, Resource then Condition).
2. A custom policy travels base64-encoded (`Policy=` or `CloudFront-Policy`) and is signed as
   those very bytes; it holds one statement whose `DateLessThan` is required and whose
   `Resource` may use `*` (any run of characters, `/` included) and `?` (one character).
3. CloudFront's base64 swaps the three characters a query string or cookie cannot carry:
   `+` -> `-`, `=` -> `_`, `/` -> `~`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_TO_CLOUDFRONT = bytes.maketrans(b"+=/", b"-_~")
_FROM_CLOUDFRONT = bytes.maketrans(b"-_~", b"+=/")


def encode(data: bytes) -> str:
    """Base64 in CloudFront's alphabet, as URLs and cookies carry it."""
    return base64.b64encode(data).translate(_TO_CLOUDFRONT).decode("ascii")


def decode(text: str) -> bytes:
    """The bytes of CloudFront-base64 `text`; ValueError when it is not that."""
    try:
        raw = text.strip().encode("ascii").translate(_FROM_CLOUDFRONT)
        return base64.b64decode(raw, validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise ValueError("not CloudFront base64 (A-Z a-z 0-9 - ~ and _ padding)") from None


def canned_policy(resource: str, expires: int) -> bytes:
    """The canned policy both signer and CloudFront build for `resource` until `expires`."""
    return custom_policy(resource, expires)


def custom_policy(
    resource: str, expires: int, starts: int | None = None, source_ip: str | None = None
) -> bytes:
    """A one-statement policy, in the key order botocore's `build_policy` writes."""
    condition: dict[str, Any] = {"DateLessThan": {"AWS:EpochTime": int(expires)}}
    if source_ip is not None:
        condition["IpAddress"] = {"AWS:SourceIp": source_ip}
    if starts is not None:
        condition["DateGreaterThan"] = {"AWS:EpochTime": int(starts)}
    statement = {"Statement": [{"Resource": resource, "Condition": condition}]}
    return json.dumps(statement, separators=(",", ":")).encode("utf-8")


class PolicyError(ValueError):
    """A policy CloudFront would refuse to read; the message says what is wrong in words."""


@dataclass(frozen=True)
class Policy:
    """One policy statement as CloudFront reads it."""

    resource: str | None  # None: every object the key group's distributions serve
    date_less_than: int
    date_greater_than: int | None = None
    source_ip: str | None = None  # a CIDR block

    @property
    def has_wildcard(self) -> bool:
        return self.resource is not None and ("*" in self.resource or "?" in self.resource)


def parse_policy(raw: bytes) -> Policy:
    """Read a policy statement; PolicyError says why CloudFront would not."""
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise PolicyError("the policy is not JSON") from None
    statements = document.get("Statement") if isinstance(document, dict) else None
    if not isinstance(statements, list) or len(statements) != 1:
        raise PolicyError("the policy must hold exactly one statement in `Statement`")
    statement = statements[0]
    if not isinstance(statement, dict) or not isinstance(statement.get("Condition"), dict):
        raise PolicyError("the policy statement has no `Condition`")
    unknown = sorted(set(statement) - {"Resource", "Condition"})
    if unknown:
        raise PolicyError(f"the policy statement has an unknown field {unknown[0]!r}")
    resource = statement.get("Resource")
    if resource is not None and not isinstance(resource, str):
        raise PolicyError("the policy's `Resource` is not a string")
    condition = statement["Condition"]
    unknown = sorted(set(condition) - {"DateLessThan", "DateGreaterThan", "IpAddress"})
    if unknown:
        raise PolicyError(f"the policy's Condition has an unknown field {unknown[0]!r}")
    if "DateLessThan" not in condition:
        raise PolicyError("the policy has no `DateLessThan` (CloudFront requires an expiry)")
    ends = _epoch(condition, "DateLessThan")
    starts = _epoch(condition, "DateGreaterThan") if "DateGreaterThan" in condition else None
    source_ip = None
    if "IpAddress" in condition:
        value = condition["IpAddress"]
        source_ip = value.get("AWS:SourceIp") if isinstance(value, dict) else None
        try:
            ipaddress.ip_network(str(source_ip), strict=False)
        except ValueError:
            raise PolicyError('the policy\'s `IpAddress` is not {"AWS:SourceIp": CIDR}') from None
    return Policy(resource, ends, starts, source_ip)


def _epoch(condition: dict[str, Any], name: str) -> int:
    value = condition[name]
    moment = value.get("AWS:EpochTime") if isinstance(value, dict) else None
    if isinstance(moment, bool) or not isinstance(moment, int):
        raise PolicyError(f'the policy\'s `{name}` is not {{"AWS:EpochTime": whole seconds}}')
    return moment


def resource_matches(resource: str, url: str) -> bool:
    """Whether a policy's Resource covers `url`: `*` is any run of characters (`/` included),
    `?` exactly one; everything else matches itself, case included."""
    return _wildcard(resource).fullmatch(url) is not None


@lru_cache(maxsize=1024)
def _wildcard(resource: str) -> re.Pattern[str]:
    parts = (".*" if char == "*" else "." if char == "?" else re.escape(char) for char in resource)
    return re.compile("".join(parts), re.DOTALL)
