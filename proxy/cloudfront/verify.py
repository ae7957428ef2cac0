"""Judge a signed URL or a set of signed cookies as CloudFront would, and say why in words.
No I/O: `python -m proxy cloudfront explain` and the demo's stand-in edge both call this.

CloudFront's checks, as its developer guide lays them out:

1. The signing material comes from the URL's query when it carries any (`Expires`, `Policy`,
   `Signature`, `Key-Pair-Id`, `Hash-Algorithm`), else from the `CloudFront-*` cookies.
2. `Key-Pair-Id` must name a public key of the distribution's trusted key group.
3. The policy is the custom one sent (`Policy`), or the canned one rebuilt from the URL
   without CloudFront's parameters and `Expires`; the signature must verify over those very
   bytes with that public key, hashed with SHA-1 unless `Hash-Algorithm=SHA256`.
4. The request must come before `DateLessThan` (and not before `DateGreaterThan`), from
   within `IpAddress` when set, and for a URL the policy's `Resource` covers (`*`, `?`).

Every problem found is reported, not only the first: an explanation names them all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from .keys import HASH_NAMES, HashName, VerifyingKey, describe
from .policy import Policy, PolicyError, canned_policy, decode, parse_policy, resource_matches
from .signer import COOKIE_PREFIX, URL_PARAMS

_FIELDS = ("Expires", "Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm")


@dataclass(frozen=True)
class Presented:
    """The signing material one request carried, and the URL CloudFront judges it against
    (the request's URL without CloudFront's own query parameters)."""

    via: Literal["url", "cookies", "nothing"]
    url: str
    fields: Mapping[str, str]  # Expires, Policy, Signature, Key-Pair-Id, Hash-Algorithm
    duplicates: tuple[str, ...] = ()  # cookie names the request carried more than once


def from_request(url: str, cookie_header: str | None) -> Presented:
    """What CloudFront reads from a request: the URL's parameters if any, else cookies."""
    base, fields = _split_url(url)
    if fields:
        return Presented("url", base, fields)
    if cookie_header:
        found, duplicates = _cookie_fields(cookie_header)
        if found:
            return Presented("cookies", base, found, duplicates)
    return Presented("nothing", base, {})


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    head, sep, query = url.partition("?")
    if not sep:
        return url, {}
    kept: list[str] = []
    fields: dict[str, str] = {}
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name in URL_PARAMS:
            fields.setdefault(name, value)
        elif pair:
            kept.append(pair)
    return (head + "?" + "&".join(kept)) if kept else head, fields


def _cookie_fields(header: str) -> tuple[dict[str, str], tuple[str, ...]]:
    header = header.strip()
    if header.lower().startswith("cookie:"):
        header = header[len("cookie:") :]
    fields: dict[str, str] = {}
    duplicates: list[str] = []
    for pair in header.split(";"):
        name, _, value = pair.strip().partition("=")
        field = name.removeprefix(COOKIE_PREFIX)
        if not name.startswith(COOKIE_PREFIX) or field not in _FIELDS:
            continue
        if field in fields:
            duplicates.append(name)
        fields.setdefault(field, value.strip().strip('"'))
    return fields, tuple(duplicates)


@dataclass(frozen=True)
class Verdict:
    """CloudFront's answer: `refusals` empty means it serves the object."""

    refusals: tuple[str, ...]
    facts: tuple[str, ...]  # what the material says, for an explanation
    code: str = ""  # CloudFront's error code when refused: MissingKey or AccessDenied
    policy: Policy | None = None

    @property
    def accepted(self) -> bool:
        return not self.refusals


def verify(
    presented: Presented,
    trusted: Mapping[str, VerifyingKey],
    now: float,
    client_ip: str | None = None,
) -> Verdict:
    """Judge `presented` against the trusted key group at time `now`."""
    fields = presented.fields
    where = "query parameter" if presented.via == "url" else "cookie"
    prefix = "" if presented.via == "url" else COOKIE_PREFIX
    if presented.via == "nothing":
        return Verdict(
            (
                "no signature: the URL has no Signature and Key-Pair-Id parameters and no "
                "CloudFront-* cookies came with it",
            ),
            (),
            "MissingKey",
        )
    facts = [f"signed {'URL' if presented.via == 'url' else 'cookies'} for {presented.url}"]
    refusals: list[str] = []
    refusals += [
        f"the request carried {name} twice (cookies of two scopes whose Domain and Path "
        "overlap); CloudFront may read either"
        for name in presented.duplicates
    ]
    key_id = fields.get("Key-Pair-Id")
    if not key_id:
        refusals.append(f"missing key: no {prefix}Key-Pair-Id {where}")
        return Verdict(tuple(refusals), tuple(facts), "MissingKey")
    hash_name = _hash_name(fields.get("Hash-Algorithm"), prefix, where, refusals)
    policy_bytes, policy = _policy(presented, prefix, refusals, facts)
    signature = _signature(fields.get("Signature"), prefix, where, refusals)
    key = trusted.get(key_id)
    if key is None:
        known = ", ".join(sorted(trusted)) or "none"
        refusals.append(
            f"wrong key id: {key_id} is not a key of the trusted key group (configured: {known})"
        )
    else:
        facts.append(f"key {key_id} ({describe(key.public)}), hashed with {hash_name}")
    if policy_bytes is not None and signature is not None and hash_name is not None:
        if key is not None and not key.verify(policy_bytes, signature, hash_name):
            refusals.append(
                _bad_signature(presented, key_id, trusted, policy_bytes, signature, hash_name)
            )
        elif key is None:
            signer = _signed_by(trusted, policy_bytes, signature, hash_name)
            if signer is not None:
                refusals.append(
                    f"the signature is {signer}'s, but Key-Pair-Id names {key_id}: send "
                    f"Key-Pair-Id={signer}"
                )
    if policy is not None:
        refusals += _conditions(policy, presented, now, client_ip, facts)
    return Verdict(tuple(refusals), tuple(facts), "AccessDenied" if refusals else "", policy)


def _hash_name(value: str | None, prefix: str, where: str, refusals: list[str]) -> HashName | None:
    if value is None or value == "SHA1":
        return "SHA1"
    if value == "SHA256":
        return "SHA256"
    refusals.append(
        f"unknown hash algorithm: {prefix}Hash-Algorithm {where} is {value[:20]!r}; "
        f"CloudFront takes {' or '.join(HASH_NAMES)}"
    )
    return None


def _policy(
    presented: Presented, prefix: str, refusals: list[str], facts: list[str]
) -> tuple[bytes | None, Policy | None]:
    fields = presented.fields
    expires, encoded = fields.get("Expires"), fields.get("Policy")
    if expires is not None and encoded is not None:
        refusals.append(
            f"both {prefix}Expires (canned policy) and {prefix}Policy (custom policy) were "
            "sent; send one"
        )
        return None, None
    if expires is not None:
        if not expires.isdigit():
            refusals.append(f"{prefix}Expires is not whole seconds since 1970: {expires[:20]!r}")
            return None, None
        facts.append("a canned policy (rebuilt from the URL and Expires)")
        raw = canned_policy(presented.url, int(expires))
        return raw, parse_policy(raw)
    if encoded is None:
        refusals.append(
            f"no policy: neither {prefix}Expires (canned) nor {prefix}Policy (custom) was sent"
        )
        return None, None
    try:
        raw = decode(encoded)
    except ValueError as exc:
        refusals.append(f"malformed policy: {prefix}Policy is {exc}")
        return None, None
    try:
        policy = parse_policy(raw)
    except PolicyError as exc:
        refusals.append(f"malformed policy: {exc}")
        return raw, None
    facts.append(f"a custom policy: {raw.decode('utf-8', 'replace')}")
    return raw, policy


def _signature(value: str | None, prefix: str, where: str, refusals: list[str]) -> bytes | None:
    if not value:
        refusals.append(f"no signature: no {prefix}Signature {where}")
        return None
    try:
        return decode(value)
    except ValueError as exc:
        refusals.append(f"bad signature: {prefix}Signature is {exc}")
        return None


def _signed_by(
    trusted: Mapping[str, VerifyingKey], policy: bytes, signature: bytes, hash_name: HashName
) -> str | None:
    """Which configured key made this signature, if any (to name a key ID mix-up)."""
    return next(
        (key_id for key_id, key in trusted.items() if key.verify(policy, signature, hash_name)),
        None,
    )


def _bad_signature(
    presented: Presented,
    key_id: str,
    trusted: Mapping[str, VerifyingKey],
    policy: bytes,
    signature: bytes,
    hash_name: HashName,
) -> str:
    signer = _signed_by(trusted, policy, signature, hash_name)
    if signer is not None:
        return (
            f"bad signature: it is {signer}'s, but Key-Pair-Id names {key_id}: send "
            f"Key-Pair-Id={signer}"
        )
    other: HashName = "SHA256" if hash_name == "SHA1" else "SHA1"
    if trusted[key_id].verify(policy, signature, other):
        fix = "send Hash-Algorithm=SHA256" if other == "SHA256" else "drop Hash-Algorithm"
        return f"bad signature: it was hashed with {other}, the request says {hash_name}; {fix}"
    if "Expires" in presented.fields:
        return (
            f"bad signature: key {key_id}'s public key does not verify it over the canned "
            "policy of this URL and Expires; the URL (scheme, host, path, query) or Expires "
            "changed after signing, or another private key signed it"
        )
    return (
        f"bad signature: key {key_id}'s public key does not verify it over the policy sent; "
        "the policy changed after signing, or another private key signed it"
    )


def _conditions(
    policy: Policy, presented: Presented, now: float, client_ip: str | None, facts: list[str]
) -> list[str]:
    refusals = []
    ends = policy.date_less_than
    facts.append(f"valid until {_iso(ends)} (DateLessThan {ends})")
    if now >= ends:
        refusals.append(f"expired: DateLessThan {_iso(ends)} passed {int(now - ends)} s ago")
    starts = policy.date_greater_than
    if starts is not None:
        facts.append(f"valid from {_iso(starts)} (DateGreaterThan {starts})")
        if now < starts:
            refusals.append(
                f"not yet valid: DateGreaterThan {_iso(starts)} is {int(starts - now)} s away"
            )
    if "Expires" in presented.fields:
        pass  # a canned policy's Resource is the URL itself: the signature covers it
    elif policy.resource is None:
        facts.append("no Resource: it covers every object of the key group's distributions")
    else:
        facts.append(f"Resource {policy.resource}")
        if not resource_matches(policy.resource, presented.url):
            kind = "wildcard scope" if policy.has_wildcard else "resource mismatch"
            refusals.append(
                f"{kind}: the policy's Resource {policy.resource} does not cover "
                f"{presented.url}"
                + ("" if not policy.has_wildcard else " (* stands for any characters, ? for one)")
            )
    if policy.source_ip is not None:
        facts.append(f"only from {policy.source_ip}")
        if client_ip is not None and not _in_network(client_ip, policy.source_ip):
            refusals.append(f"wrong client address: {client_ip} is outside {policy.source_ip}")
    return refusals


def _in_network(address: str, network: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
