"""The client behind trusted proxies (proxy/forwarded.py), fed headers without sockets: the
rightmost untrusted address, never a header from an untrusted peer, only IP literals."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.config import ConfigError
from proxy.forwarded import Client, ClientResolver, parse_address

from .conftest import build_config, config_dict

INGRESS = ClientResolver(["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"])


def _headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def _client(peer: str, *pairs: tuple[str, str], resolver: ClientResolver = INGRESS) -> Client:
    return resolver.resolve(peer, _headers(*pairs), resolver.trusts(peer))


def test_an_untrusted_peer_is_the_client_whatever_its_headers_say() -> None:
    forged = _client(
        "198.51.100.7",
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=10.0.0.2;proto=https"),
    )
    assert forged == Client("198.51.100.7", None, False)


def test_a_trusted_peer_names_the_rightmost_untrusted_address() -> None:
    # The client wrote "1.1.1.1, 2.2.2.2"; the ingress appended the address it saw.
    client = _client("10.1.2.3", ("X-Forwarded-For", "1.1.1.1, 2.2.2.2, 203.0.113.9"))
    assert client == Client("203.0.113.9", None, True)


def test_trusted_hops_are_skipped_from_the_right() -> None:
    # CDN edge (untrusted client 203.0.113.9) -> ingress 10.0.0.5 -> sidecar 127.0.0.1.
    client = _client("127.0.0.1", ("X-Forwarded-For", "6.6.6.6, 203.0.113.9, 10.0.0.5"))
    assert client.address == "203.0.113.9"


def test_several_header_lines_are_one_list() -> None:
    client = _client(
        "10.0.0.1", ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.9, 10.9.9.9")
    )
    assert client.address == "203.0.113.9"


def test_all_trusted_means_the_leftmost() -> None:
    assert _client("10.0.0.1", ("X-Forwarded-For", "10.0.0.7, 10.0.0.8")).address == "10.0.0.7"


def test_a_trusted_peer_without_the_header_is_the_client() -> None:
    assert _client("10.0.0.1") == Client("10.0.0.1", None, True)


@pytest.mark.parametrize(
    ("chain", "expected"),
    [
        ("unknown, 10.0.0.9", "10.0.0.9"),  # the walk stops; the proxy that wrote it
        ("203.0.113.9, garbage", "10.0.0.1"),  # the peer wrote garbage: the peer
        ("203.0.113.9, ", "10.0.0.1"),
        ("<script>", "10.0.0.1"),
        ("203.0.113.9:4711", "203.0.113.9"),  # IPv4 with a port (some balancers add it)
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("2001:DB8:0::1", "2001:db8::1"),  # canonical form: one client, one bucket
        ("::ffff:203.0.113.9", "203.0.113.9"),  # IPv4-mapped
    ],
)
def test_only_ip_literals_become_the_client(chain: str, expected: str) -> None:
    assert _client("10.0.0.1", ("X-Forwarded-For", chain)).address == expected


def test_the_scheme_is_the_nearest_proxys_word() -> None:
    assert _client("10.0.0.1", ("X-Forwarded-Proto", "http, https")).scheme == "https"
    assert _client("10.0.0.1", ("X-Forwarded-Proto", "HTTPS")).scheme == "https"
    assert _client("10.0.0.1", ("X-Forwarded-Proto", "gopher")).scheme is None
    assert _client("10.0.0.1").scheme is None


def test_only_the_configured_header_is_read() -> None:
    # nginx sets X-Forwarded-For and passes a client's own Forwarded header through.
    spoof = ("Forwarded", "for=192.0.2.1;proto=https")
    assert _client("10.0.0.1", ("X-Forwarded-For", "203.0.113.9"), spoof) == Client(
        "203.0.113.9", None, True
    )
    standard = ClientResolver(["10.0.0.0/8"], "Forwarded")
    read = _client("10.0.0.1", ("X-Forwarded-For", "192.0.2.1"), resolver=standard)
    assert read == Client("10.0.0.1", None, True)


def test_rfc_7239_forwarded() -> None:
    standard = ClientResolver(["10.0.0.0/8"], "Forwarded")
    client = _client(
        "10.0.0.1",
        ("Forwarded", 'for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711";proto=https'),
        ("Forwarded", "for=10.0.0.3;proto=http;by=10.0.0.1"),
        resolver=standard,
    )
    # The element that named the client carries the scheme the client used.
    assert client == Client("2001:db8:cafe::17", "https", True)
    hidden = _client("10.0.0.1", ("Forwarded", "for=_hidden, for=10.0.0.2"), resolver=standard)
    assert hidden.address == "10.0.0.2"
    quoted = _client(
        "10.0.0.1", ("Forwarded", 'for="192.0.2.1";by="a,b";proto=https'), resolver=standard
    )
    assert quoted == Client("192.0.2.1", "https", True)


def test_trust_is_by_network_with_mapped_and_v6_addresses() -> None:
    assert INGRESS.trusts("10.200.0.1")
    assert INGRESS.trusts("::ffff:10.0.0.1")  # a dual-stack socket's view of an IPv4 peer
    assert INGRESS.trusts("fd00::1")
    assert not INGRESS.trusts("11.0.0.1")
    assert not INGRESS.trusts("127.0.0.2")
    assert not INGRESS.trusts(None)
    assert not INGRESS.trusts("not an address")
    assert not ClientResolver([]).trusts("10.0.0.1")
    assert not ClientResolver([])


def test_parse_address() -> None:
    assert str(parse_address(' "192.0.2.1:80" ')) == "192.0.2.1"
    assert parse_address("[::1]") is not None
    assert parse_address("example.com") is None
    assert parse_address("") is None


def test_trusted_proxies_are_checked_at_load_naming_the_key() -> None:
    def problems(**listen: object) -> str:
        with pytest.raises(ConfigError) as caught:
            build_config(config_dict(listen=listen))
        return str(caught.value)

    assert "listen.trusted_proxies[1]: must be an IP network in CIDR form" in problems(
        trusted_proxies=["10.0.0.0/8", "ingress.local"]
    )
    assert "did you mean 10.0.0.0/8" in problems(trusted_proxies=["10.1.2.3/8"])
    assert "trusts every address" in problems(trusted_proxies=["0.0.0.0/0"])
    assert "listen.proxy_protocol: needs listen.trusted_proxies" in problems(proxy_protocol=True)
    assert "listen.forwarded_header" in problems(forwarded_header="X-Real-IP")
    listen = build_config(config_dict(listen={"trusted_proxies": ["127.0.0.1", "fd00::/8"]}))
    assert listen.settings.listen.trusted_proxies == ["127.0.0.1/32", "fd00::/8"]
