"""The PROXY protocol parser (sans-IO): the specification's examples, fed whole, one
byte at a time and with trailing data; a corpus of invalid headers; hypothesis."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkserve._errors import ProxyProtocolError
from forkserve.core.proxy import (
    SIGNATURE,
    ProxyHeader,
    ProxyReader,
    format_ip,
    parse_ipv6,
)
from forkserve.core.proxynet import encode_v1, encode_v2, in_networks, parse_network

TRAILING = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n\r\n\x00\r\nQUIT\n"


def v2(ver_cmd: int, fam: int, block: bytes, length: int | None = None) -> bytes:
    size = len(block) if length is None else length
    return SIGNATURE + bytes([ver_cmd, fam]) + size.to_bytes(2, "big") + block


V4_BLOCK = bytes([192, 168, 0, 1, 192, 168, 0, 11]) + (56324).to_bytes(2, "big") + b"\x01\xbb"
V6_BLOCK = (
    ipaddress.IPv6Address("2001:db8::1").packed
    + ipaddress.IPv6Address("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").packed
    + (65535).to_bytes(2, "big")
    + (65535).to_bytes(2, "big")
)

# (wire bytes, version, command, family, source, destination)
VALID: list[tuple[bytes, int, str, str, tuple[str, int] | None, tuple[str, int] | None]] = [
    (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        1,
        "PROXY",
        "TCP4",
        ("192.168.0.1", 56324),
        ("192.168.0.11", 443),
    ),
    (
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        1,
        "PROXY",
        "TCP4",
        ("255.255.255.255", 65535),
        ("255.255.255.255", 65535),
    ),
    (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        1,
        "PROXY",
        "TCP6",
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
    ),
    (b"PROXY TCP6 ::1 2001:DB8::0:1 0 80\r\n", 1, "PROXY", "TCP6", ("::1", 0), ("2001:db8::1", 80)),
    (b"PROXY UNKNOWN\r\n", 1, "PROXY", "UNKNOWN", None, None),
    (
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",  # 107 bytes, the maximum
        1,
        "PROXY",
        "UNKNOWN",
        None,
        None,
    ),
    (v2(0x21, 0x11, V4_BLOCK), 2, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
    (
        v2(0x21, 0x21, V6_BLOCK),
        2,
        "PROXY",
        "TCP6",
        ("2001:db8::1", 65535),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
    ),
    (v2(0x20, 0x00, b""), 2, "LOCAL", "UNSPEC", None, None),
    # LOCAL with an address block: the receiver must skip it and use the real peer.
    (v2(0x20, 0x11, V4_BLOCK), 2, "LOCAL", "TCP4", None, None),
    (v2(0x21, 0x00, b""), 2, "PROXY", "UNSPEC", None, None),
    # LOCAL: the family is ignored and the length need not match it (section 2.2):
    # balancers' health checks send a TCP family with no address, or a DGRAM one.
    (v2(0x20, 0x11, b""), 2, "LOCAL", "TCP4", None, None),
    (v2(0x20, 0x21, V4_BLOCK), 2, "LOCAL", "TCP6", None, None),
    (v2(0x20, 0x12, b""), 2, "LOCAL", "UNSPEC", None, None),
    (v2(0x20, 0x41, b""), 2, "LOCAL", "UNSPEC", None, None),
    (v2(0x20, 0xFF, b"\x02\x00"), 2, "LOCAL", "UNSPEC", None, None),
    # PROXY with an UNSPEC transport or family: the addresses are ignored, whatever
    # they are, and the real peer kept.
    (v2(0x21, 0x10, V4_BLOCK), 2, "PROXY", "UNSPEC", None, None),
    (v2(0x21, 0x10, b""), 2, "PROXY", "UNSPEC", None, None),
    (v2(0x21, 0x20, V4_BLOCK), 2, "PROXY", "UNSPEC", None, None),
    (v2(0x21, 0x00, bytes(5)), 2, "PROXY", "UNSPEC", None, None),
    (v2(0x21, 0x31, bytes(216)), 2, "PROXY", "UNIX", None, None),
    # TLVs: AUTHORITY, NOOP padding, a custom type, an SSL TLV with sub-TLVs.
    (
        v2(
            0x21,
            0x11,
            V4_BLOCK
            + b"\x02\x00\x0bexample.com"
            + b"\x04\x00\x00"
            + b"\xe0\x00\x02ab"
            + b"\x20\x00\x0c\x01\x00\x00\x00\x00\x21\x00\x04TLS1",
        ),
        2,
        "PROXY",
        "TCP4",
        ("192.168.0.1", 56324),
        ("192.168.0.11", 443),
    ),
]


def feed_whole(data: bytes) -> tuple[ProxyHeader | None, ProxyReader]:
    reader = ProxyReader()
    return reader.feed(data), reader


def feed_bytewise(data: bytes) -> tuple[ProxyHeader | None, ProxyReader]:
    reader = ProxyReader()
    header = None
    for i in range(len(data)):
        header = reader.feed(data[i : i + 1])
    return header, reader


def feed_wanted(data: bytes) -> tuple[ProxyHeader | None, ProxyReader]:
    """As the server reads: never more than wanted(), so the rest stays unread."""
    reader = ProxyReader()
    offset = 0
    while reader.result is None:
        want = reader.wanted()
        assert want > 0
        reader.feed(data[offset : offset + want])
        offset += want
        assert offset <= len(data)
    return reader.result, reader


FEEDERS: list[Callable[[bytes], tuple[ProxyHeader | None, ProxyReader]]] = [
    feed_whole,
    feed_bytewise,
    feed_wanted,
]


@pytest.mark.parametrize("feed", FEEDERS)
@pytest.mark.parametrize(("wire", "version", "command", "family", "source", "dest"), VALID)
def test_valid_headers(  # noqa: PLR0917 - one per parametrized column
    feed: Callable[[bytes], tuple[ProxyHeader | None, ProxyReader]],
    wire: bytes,
    version: int,
    command: str,
    family: str,
    source: tuple[str, int] | None,
    dest: tuple[str, int] | None,
) -> None:
    header, reader = feed(wire)
    assert header is not None
    assert (header.version, header.command, header.family) == (version, command, family)
    assert (header.source, header.destination) == (source, dest)
    assert header.length == len(wire)
    assert reader.trailing == b""
    assert reader.wanted() == 0


@pytest.mark.parametrize(("wire", "version", "command", "family", "source", "dest"), VALID)
def test_trailing_data_is_left_untouched(  # noqa: PLR0917
    wire: bytes, version: int, command: str, family: str, source: object, dest: object
) -> None:
    for feed in (feed_whole, feed_bytewise):
        header, reader = feed(wire + TRAILING)
        assert header is not None and header.length == len(wire)
        assert reader.trailing == TRAILING
    _, reader = feed_wanted(wire + TRAILING)
    reader.feed(b"more")
    assert reader.trailing == b"more"


def test_tlvs_of_headers_without_addresses_are_read_when_they_can_be_found() -> None:
    authority = ((0x02, b"lb.example"),)
    header, _ = feed_whole(encode_v2(None, None, authority))
    assert header is not None and header.command == "LOCAL" and header.authority == "lb.example"
    header, _ = feed_whole(v2(0x20, 0x11, V4_BLOCK + b"\x02\x00\x02lb"))
    assert header is not None and header.authority == "lb" and header.source is None
    header, _ = feed_whole(v2(0x20, 0x11, b"\x02\x00\x02lb"))  # short of the family's
    assert header is not None and header.tlvs == ()


def test_tlvs_are_exposed() -> None:
    header, _ = feed_whole(VALID[-1][0])
    assert header is not None
    assert header.authority == "example.com"
    assert [kind for kind, _ in header.tlvs] == [0x02, 0x04, 0xE0, 0x20]
    assert header.alpn is None


# (wire bytes, reason) for headers that must be refused.
INVALID: list[tuple[bytes, str]] = [
    (b"GET / HTTP/1.1\r\n\r\n", "signature"),
    (b"PROXY\r\n", "signature"),
    (b"proxy TCP4 1.2.3.4 1.2.3.4 1 1\r\n", "signature"),
    (b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x00", "signature"),
    (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 1\r\n", "family"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1\n", "v1-line"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r1\r\n", "v1-line"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "v1-line"),
    (b"PROXY TCP4  1.2.3.4 1.2.3.4 1 1\r\n", "v1-line"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 01 1\r\n", "address"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 1\r\n", "address"),
    (b"PROXY TCP4 1.2.3.04 1.2.3.4 1 1\r\n", "address"),
    (b"PROXY TCP4 1.2.3.256 1.2.3.4 1 1\r\n", "address"),
    (b"PROXY TCP4 ::1 ::1 1 1\r\n", "address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 1\r\n", "address"),
    (b"PROXY TCP6 1::2::3 ::1 1 1\r\n", "address"),
    (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 1\r\n", "address"),
    (b"PROXY TCP6 12345::1 ::1 1 1\r\n", "address"),
    (b"PROXY TCP4 \xff.2.3.4 1.2.3.4 1 1\r\n", "v1-line"),
    (b"PROXY UNKNOWN " + b"f" * 100, "v1-too-long"),
    (b"PROXY TCP4 " + b"1" * 200 + b"\r\n", "v1-too-long"),
    (v2(0x11, 0x11, V4_BLOCK), "version"),
    (v2(0x22, 0x11, V4_BLOCK), "command"),
    (v2(0x21, 0x41, V4_BLOCK), "family"),
    (v2(0x21, 0x13, V4_BLOCK), "family"),
    (v2(0x21, 0x12, V4_BLOCK), "family"),
    (v2(0x21, 0x40, V4_BLOCK), "family"),
    (v2(0x21, 0x03, b""), "family"),
    (v2(0x20, 0x11, b"", length=60000), "length"),
    (v2(0x21, 0x11, V4_BLOCK[:8]), "length"),
    (v2(0x21, 0x21, V4_BLOCK), "length"),
    (v2(0x21, 0x11, b"", length=60000), "length"),
    (v2(0x21, 0x11, V4_BLOCK + b"\x02\x00"), "tlv"),
    (v2(0x21, 0x11, V4_BLOCK + b"\x02\x00\x05abc"), "tlv"),
]


@pytest.mark.parametrize(("wire", "reason"), INVALID)
def test_invalid_headers_are_refused_with_their_reason(wire: bytes, reason: str) -> None:
    for feed in (feed_whole, feed_bytewise):
        with pytest.raises(ProxyProtocolError) as info:
            feed(wire + TRAILING[:4])
        assert info.value.reason == reason, info.value


def test_truncated_v2_waits_and_never_reads_past_the_header() -> None:
    wire = v2(0x21, 0x11, V4_BLOCK)
    reader = ProxyReader()
    assert reader.feed(wire[:-1]) is None
    assert reader.wanted() == 1


def test_version_restriction() -> None:
    with pytest.raises(ProxyProtocolError):
        ProxyReader("v2").feed(b"PROXY UNKNOWN\r\n")
    with pytest.raises(ProxyProtocolError):
        ProxyReader("v1").feed(encode_v2(None, None))
    assert ProxyReader("v2").wanted() == 16


ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: format_ip(a.packed))
port = st.integers(0, 65535)


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), port, port, st.booleans())
def test_round_trip(hosts: tuple[str, str], sport: int, dport: int, version2: bool) -> None:
    source, dest = (hosts[0], sport), (hosts[1], dport)
    wire = (encode_v2 if version2 else encode_v1)(source, dest)
    header, _ = feed_wanted(wire + TRAILING)
    assert header is not None
    assert (header.source, header.destination) == (source, dest)
    assert header.length == len(wire)
    if not version2:
        assert len(wire) <= 107


@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5))
def test_tlv_round_trip(tlvs: list[tuple[int, bytes]]) -> None:
    wire = encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2), tuple(tlvs))
    header, _ = feed_whole(wire)
    assert header is not None and list(header.tlvs) == tlvs


@given(st.binary(min_size=16, max_size=16))
def test_ipv6_text_matches_ipaddress(packed: bytes) -> None:
    text = format_ip(packed)
    assert parse_ipv6(text) == packed
    if not packed.startswith(bytes(10) + b"\xff\xff"):
        assert text == str(ipaddress.IPv6Address(packed))


@given(st.binary(max_size=300), st.sampled_from(["v1", "v2", "any"]))
def test_fuzz_raises_only_its_own_error(data: bytes, accept: str) -> None:
    for prefix in (b"", b"PROXY ", SIGNATURE, SIGNATURE + b"\x21"):
        reader = ProxyReader(accept)
        try:
            reader.feed(prefix + data)
        except ProxyProtocolError:
            pass


def test_trusted_networks() -> None:
    nets = (parse_network("127.0.0.0/8"), parse_network("2001:db8::/32"))
    assert in_networks("127.0.0.2", nets)
    assert in_networks("::ffff:127.0.0.3", nets)
    assert in_networks("2001:db8::5", nets)
    assert not in_networks("10.0.0.1", nets)
    assert not in_networks("/tmp/sock", nets)
    with pytest.raises(ProxyProtocolError):
        parse_network("10.0.0.0/33")
