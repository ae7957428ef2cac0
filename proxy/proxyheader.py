"""The PROXY protocol header (HAProxy's spec, versions 1 and 2) that L4 load balancers put in
front of a connection's bytes to name the client. No I/O: fed the connection's first bytes.

Rules:
1. A header is read only from a trusted proxy (edge.py decides); a connection from anyone
   else that starts with one is refused, since it would name any client it liked.
2. Anything malformed is refused, never guessed at: a wrong header makes a wrong client.
3. `PROXY UNKNOWN` (v1), the LOCAL command and address families other than IPv4/IPv6 (v2)
   are the load balancer speaking for itself (health checks): the client is the peer.
4. Version 1 is at most 107 bytes, line included; version 2 carries its own length. Nothing
   beyond the header is consumed: the HTTP request follows it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # "PROXY TCP6 " + two full IPv6 addresses + two ports + CRLF
_V2_FIXED = 16
_V2_INET = 12  # source and destination IPv4 addresses, then their ports
_V2_INET6 = 36


class ProxyHeaderError(ValueError):
    """The connection's first bytes are not a valid PROXY header."""


@dataclass(frozen=True)
class ProxyHeader:
    source: str | None  # the client's address; None: the peer itself (rule 3)
    length: int  # bytes the header took at the start of the connection


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`; None while more bytes are needed. Raises
    ProxyHeaderError when `data` does not start with a valid one."""
    if data.startswith(V2_SIGNATURE):
        return _version_2(data)
    if data.startswith(V1_PREFIX):
        return _version_1(data)
    if starts_like_proxy_header(data) is None:
        return None  # too few bytes yet to tell
    raise ProxyHeaderError("no PROXY protocol header")


def starts_like_proxy_header(data: bytes) -> bool | None:
    """Whether a connection's first bytes are (the start of) a PROXY header: None while too
    few bytes have come to tell. An HTTP request line never starts like either version."""
    for signature in (V1_PREFIX, V2_SIGNATURE):
        if data.startswith(signature):
            return True
    if any(signature.startswith(data) for signature in (V1_PREFIX, V2_SIGNATURE)):
        return None
    return False


_V1_FAMILIES: dict[bytes, type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]] = {
    b"TCP4": ipaddress.IPv4Address,
    b"TCP6": ipaddress.IPv6Address,
}


def _version_1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("PROXY v1 line longer than 107 bytes")
        return None
    fields = data[:end].split(b" ")
    length = end + 2
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        return ProxyHeader(None, length)
    if len(fields) != 6:
        raise ProxyHeaderError("PROXY v1 line without its 6 fields")
    family = _V1_FAMILIES.get(fields[1])
    if family is None:
        raise ProxyHeaderError("PROXY v1 protocol is neither TCP4, TCP6 nor UNKNOWN")
    try:
        source = family(fields[2].decode("ascii"))
        family(fields[3].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("PROXY v1 address invalid for its protocol") from None
    if b"%" in fields[2] or b"%" in fields[3]:
        # A zone id names an interface of the sender's host: no part of a client's address,
        # and one client would otherwise count as many (limits are keyed by the address).
        raise ProxyHeaderError("PROXY v1 address with a zone id")
    for port in fields[4:]:
        # Decimal, no leading zeros (the spec), 0..65535.
        if not port.isdigit() or (port[:1] == b"0" and port != b"0") or int(port) > 65535:
            raise ProxyHeaderError("PROXY v1 port invalid")
    return ProxyHeader(_client(source), length)


def _version_2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED:
        return None
    version_command, family, size = struct.unpack_from("!BBH", data, 12)
    length = _V2_FIXED + size
    if version_command >> 4 != 2:
        raise ProxyHeaderError("PROXY v2 signature with another version")
    command = version_command & 0x0F
    if command > 1:
        raise ProxyHeaderError("PROXY v2 command is neither LOCAL nor PROXY")
    if len(data) < length:
        return None
    if command == 0:  # LOCAL: the load balancer's own connection (rule 3)
        return ProxyHeader(None, length)
    address_family = family >> 4
    block = data[_V2_FIXED:length]
    if address_family == 1:
        if size < _V2_INET:
            raise ProxyHeaderError("PROXY v2 IPv4 address block too short")
        return ProxyHeader(str(ipaddress.IPv4Address(block[:4])), length)
    if address_family == 2:
        if size < _V2_INET6:
            raise ProxyHeaderError("PROXY v2 IPv6 address block too short")
        return ProxyHeader(_client(ipaddress.IPv6Address(block[:16])), length)
    if address_family > 3:
        raise ProxyHeaderError("PROXY v2 address family unknown")
    return ProxyHeader(None, length)  # UNSPEC or UNIX: rule 3


def _client(source: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The client as the proxy names it everywhere: an IPv4-mapped IPv6 address (a
    dual-stack balancer's view of an IPv4 client) as its IPv4 address, so one client is one
    key for limits and logs however its balancer spelled it."""
    if isinstance(source, ipaddress.IPv6Address) and source.ipv4_mapped is not None:
        return str(source.ipv4_mapped)
    return str(source)
