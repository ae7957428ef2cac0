"""Who the client is behind load balancers: its address and scheme, from the socket peer and,
only when that peer is a trusted proxy, from the forwarding headers. No I/O.

Rules:
1. From a peer outside `listen.trusted_proxies` the forwarding headers are ignored entirely:
   the client is the peer. A client cannot name itself out of a limit.
2. From a trusted peer, the client is the rightmost address of the header that is not itself
   trusted. Each trusted proxy appends the address that connected to it, so every entry to
   the right of that one was written by a proxy we trust, and every entry to its left came
   from the client and may be forged.
3. When every address in the header is trusted (traffic from inside), the leftmost one.
4. An entry that is not an IP address (`unknown`, an obfuscated name, garbage) ends the walk:
   the client is then the proxy that wrote it, the last hop known to have connected. Only IP
   literals ever become a client address (it keys limits and Redis, and goes to the log).
5. The scheme is the nearest proxy's word (the rightmost X-Forwarded-Proto value, or the
   proto= of the Forwarded element the client was found in), if it says http or https.
6. A Forwarded line whose quoted string never closes is split on every comma (rule 2's
   entries on the right are the proxies', and a client's open quote must not swallow them).
7. Only the configured header is read (`listen.forwarded_header`): a proxy that sets one of
   X-Forwarded-For and Forwarded usually passes the other through from the client as it came.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from multidict import MultiMapping

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_CACHED_ADDRESSES = 4096
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SCHEMES = frozenset({"http", "https"})


class Client(NamedTuple):  # a tuple: made for every request from a trusted proxy
    """Where a request came from, as far as the proxy can tell."""

    address: str | None  # an IP literal, canonical form; None only without a peer (a pipe)
    scheme: str | None  # http or https as a trusted proxy said; None: as the socket says
    via_trusted_proxy: bool  # the peer is a trusted proxy (its headers were read)


def parse_address(text: str) -> Address | None:
    """An IP address as headers and PROXY headers write it: `192.0.2.1`, `192.0.2.1:4711`,
    `2001:db8::1`, `[2001:db8::1]:4711`, optionally quoted. IPv4-mapped IPv6 addresses (as a
    dual-stack socket reports IPv4 peers) become IPv4. None if it is not an address."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port (some load balancers append it)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientResolver:
    """`listen.trusted_proxies` and `listen.forwarded_header`, compiled once."""

    def __init__(self, networks: Iterable[str], header: str = "X-Forwarded-For") -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(network) for network in networks
        )
        self.standard = header.lower() == "forwarded"  # RFC 7239 rather than X-Forwarded-*
        # Parsing an address and matching it against the networks costs microseconds, and the
        # same few (the proxies', the busy clients') come again and again. Bounded: only the
        # entries a walk reaches are looked up, each a real hop's or client's address.
        self._classify = functools.lru_cache(maxsize=_CACHED_ADDRESSES)(self._classify_entry)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str | None) -> bool:
        """Whether `address` is one of the trusted proxies."""
        if address is None or not self.networks:
            return False
        classified = self._classify(address)
        return classified is not None and classified[1]

    def _classify_entry(self, entry: str) -> tuple[str, bool] | None:
        """An entry's address in canonical form and whether it is trusted; None if it is not
        an address."""
        address = parse_address(entry)
        if address is None:
            return None
        return str(address), any(address in network for network in self.networks)

    def resolve(self, peer: str | None, headers: MultiMapping[str], trusted: bool) -> Client:
        """The client of one request from `peer` (`trusted`: whether trusts(peer), known per
        connection)."""
        if not trusted:
            return Client(peer, None, False)
        if self.standard:
            return self._from_forwarded(peer, headers.getall("Forwarded", ()))
        chain = _entries(headers.getall("X-Forwarded-For", []))
        protos = _entries(headers.getall("X-Forwarded-Proto", []))
        address, _ = self._walk(peer, chain)
        return Client(address, _scheme(protos[-1]) if protos else None, True)

    def _from_forwarded(self, peer: str | None, lines: Sequence[str]) -> Client:
        elements = [_pairs(element) for line in lines for element in _split(line, ",")]
        address, index = self._walk(peer, [element.get("for", "") for element in elements])
        scheme = _scheme(elements[index].get("proto", "")) if index is not None else None
        return Client(address, scheme, True)

    def _walk(self, peer: str | None, chain: Sequence[str]) -> tuple[str | None, int | None]:
        """Rules 2 to 4, given the header's entries left to right: the client, and the index
        of the entry it was read from (None: the peer itself)."""
        client, found = peer, None
        for index in range(len(chain) - 1, -1, -1):
            classified = self._classify(chain[index])
            if classified is None:
                break  # rule 4
            client, found = classified[0], index
            if not classified[1]:
                break  # rule 2
        return client, found  # rule 3, or no header at all: the peer itself


def _entries(lines: list[str]) -> list[str]:
    """A comma-separated list header's entries, however many lines it came in."""
    return (lines[0] if len(lines) == 1 else ",".join(lines)).split(",") if lines else []


def _scheme(value: str) -> str | None:
    value = value.strip().strip('"').lower()
    return value if value in _SCHEMES else None


def _pairs(element: str) -> dict[str, str]:
    """`for=192.0.2.60;proto=http;by=203.0.113.43` -> its pairs, names in lower case; the
    first of a repeated name counts."""
    pairs: dict[str, str] = {}
    for pair in _split(element, ";"):
        name, equals, value = pair.partition("=")
        if equals:
            pairs.setdefault(name.strip().lower(), value.strip())
    return pairs


def _split(text: str, separator: str) -> list[str]:
    """Split on `separator` outside quoted strings (RFC 7230 quoted-string, with escapes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    if quoted:
        # A quoted string left open (by a client: a proxy that appends its element to the
        # client's line writes whole ones) would swallow every element after it, the proxies'
        # included, and its own `for=` would name the client. Split as if unquoted instead:
        # the elements appended after the client's stay whole (none holds a comma).
        parts = text.split(separator)
    return [part for part in (p.strip() for p in parts) if part]
