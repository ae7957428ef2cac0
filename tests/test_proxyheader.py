"""The PROXY protocol header parser (proxy/proxyheader.py), fed bytes: versions 1 and 2, partial
input, and every malformed header refused rather than guessed at."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from proxy.proxyheader import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    parse_proxy_header,
    starts_like_proxy_header,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def v2(command: int, family: int, block: bytes, version: int = 2) -> bytes:
    """A version 2 header: command 0 LOCAL / 1 PROXY; family byte (0x11 TCP over IPv4...)."""
    return V2_SIGNATURE + struct.pack("!BBH", version << 4 | command, family, len(block)) + block


def v2_inet(source: str, destination: str = "10.0.0.9", tlvs: bytes = b"") -> bytes:
    block = (
        ipaddress.IPv4Address(source).packed
        + ipaddress.IPv4Address(destination).packed
        + struct.pack("!HH", 51234, 8080)
        + tlvs
    )
    return v2(1, 0x11, block)


def v2_inet6(source: str) -> bytes:
    block = (
        ipaddress.IPv6Address(source).packed
        + ipaddress.IPv6Address("fd00::9").packed
        + struct.pack("!HH", 51234, 8080)
    )
    return v2(1, 0x21, block)


def test_version_1_tcp4_and_tcp6() -> None:
    line = b"PROXY TCP4 203.0.113.9 10.0.0.9 51234 8080\r\n"
    assert parse_proxy_header(line + REQUEST) == ProxyHeader("203.0.113.9", len(line))
    line6 = b"PROXY TCP6 2001:db8::1 fd00::9 51234 8080\r\n"
    assert parse_proxy_header(line6) == ProxyHeader("2001:db8::1", len(line6))


def test_version_1_ipv4_mapped_is_the_ipv4_client_as_in_version_2() -> None:
    """A dual-stack balancer may spell an IPv4 client as ::ffff:a.b.c.d: the same client (one
    key for rate limits, one name in the logs) whichever version or spelling it uses."""
    line = b"PROXY TCP6 ::ffff:203.0.113.9 fd00::9 51234 8080\r\n"
    assert parse_proxy_header(line) == ProxyHeader("203.0.113.9", len(line))
    assert parse_proxy_header(v2_inet6("::ffff:203.0.113.9")).source == "203.0.113.9"


def test_version_1_unknown_is_the_balancer_itself() -> None:
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n") == ProxyHeader(None, 15)
    line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"
    assert parse_proxy_header(line + REQUEST) == ProxyHeader(None, len(line))


def test_version_2_inet_inet6_and_tlvs() -> None:
    header = v2_inet("203.0.113.9", tlvs=b"\x04\x00\x03abc")  # a TLV (e.g. a VPC id)
    assert parse_proxy_header(header + REQUEST) == ProxyHeader("203.0.113.9", len(header))
    header6 = v2_inet6("2001:db8::1")
    assert parse_proxy_header(header6) == ProxyHeader("2001:db8::1", len(header6))
    mapped = v2_inet6("::ffff:203.0.113.9")
    assert parse_proxy_header(mapped) == ProxyHeader("203.0.113.9", len(mapped))


def test_version_2_local_unspec_and_unix_are_the_balancer_itself() -> None:
    assert parse_proxy_header(v2(0, 0x00, b"")) == ProxyHeader(None, 16)
    assert parse_proxy_header(v2(0, 0x11, b"\0" * 12)) == ProxyHeader(None, 28)
    assert parse_proxy_header(v2(1, 0x00, b"")) == ProxyHeader(None, 16)
    assert parse_proxy_header(v2(1, 0x31, b"\0" * 216)) == ProxyHeader(None, 232)


@pytest.mark.parametrize(
    "whole",
    [b"PROXY TCP4 203.0.113.9 10.0.0.9 51234 8080\r\n", v2_inet("203.0.113.9")],
)
def test_a_header_in_pieces_waits_for_the_rest(whole: bytes) -> None:
    for end in range(len(whole)):
        assert parse_proxy_header(whole[:end]) is None, end
    assert parse_proxy_header(whole) is not None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (REQUEST, "no PROXY protocol header"),
        (b"PROXY TCP4 203.0.113.9 10.0.0.9 51234\r\n", "6 fields"),
        (b"PROXY TCP5 203.0.113.9 10.0.0.9 1 2\r\n", "neither TCP4"),
        (b"PROXY TCP4 2001:db8::1 10.0.0.9 1 2\r\n", "address invalid"),
        (b"PROXY TCP4 203.0.113.9 10.0.0.9 01 2\r\n", "port invalid"),
        (b"PROXY TCP4 203.0.113.9 10.0.0.9 65536 2\r\n", "port invalid"),
        (b"PROXY TCP4 \xff.0.113.9 10.0.0.9 1 2\r\n", "address invalid"),
        (b"PROXY " + b"x" * 200, "longer than 107"),
        # A zone id is the sender's interface, not the client's address: one client would
        # count as many against per-client limits.
        (b"PROXY TCP6 fe80::1%eth0 fd00::9 1 2\r\n", "zone id"),
        (b"PROXY TCP6 2001:db8::1 fe80::9%1 1 2\r\n", "zone id"),
        (v2(1, 0x11, b"", version=1), "another version"),
        (v2(2, 0x11, b"\0" * 12), "neither LOCAL nor PROXY"),
        (v2(1, 0x11, b"\0" * 11), "too short"),
        (v2(1, 0x21, b"\0" * 35), "too short"),
        (v2(1, 0x41, b""), "family unknown"),
    ],
)
def test_malformed_headers_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        parse_proxy_header(data)


def test_telling_a_header_from_a_request() -> None:
    assert starts_like_proxy_header(b"GET / HTTP/1.1") is False
    assert starts_like_proxy_header(b"PUT /x") is False
    assert starts_like_proxy_header(b"P") is None  # PUT, POST, PATCH or PROXY: wait
    assert starts_like_proxy_header(b"PROX") is None
    assert starts_like_proxy_header(b"PROXY ") is True
    assert starts_like_proxy_header(V2_SIGNATURE[:5]) is None
    assert starts_like_proxy_header(V2_SIGNATURE) is True
    assert starts_like_proxy_header(b"\r\n\r\nGET") is False
