"""The ``ipaddress``-based address parsing against the private parsers it replaced
(tests/unit/old_ip.py): on random text, addresses and networks, both accept the same
inputs, give the same ints, bytes and text, and refuse with the same message."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from forkserve._errors import ProxyProtocolError
from forkserve.core import proxy, proxynet, rules
from tests.unit import old_ip

ADDRESS_ALPHABET = "0123456789abcdefABCDEF:./%"
ADDRESS_TEXT = st.text(alphabet=ADDRESS_ALPHABET, max_size=50)
ADDRESSES = st.ip_addresses()
NETWORKS = ADDRESSES.flatmap(
    lambda a: st.builds(
        lambda n: ipaddress.ip_network(f"{a}/{n}", strict=False), st.integers(0, a.max_prefixlen)
    )
)
# Text close to addresses: a real one, cut or spliced, so both parsers are pushed to
# their edges more often than random text gets there.
MUTATED = st.tuples(ADDRESSES, st.integers(0, 45), st.integers(0, 45), ADDRESS_TEXT).map(
    lambda t: (str(t[0])[: t[1]] + t[3] + str(t[0])[t[2] :])[:60]
)


def outcome(function: Callable[[str], object], text: str) -> tuple[str, object]:
    """What ``function`` makes of ``text``: its value, or its error's message."""
    try:
        return "ok", function(text)
    except rules.RuleError as exc:
        return "RuleError", exc.reason
    except ProxyProtocolError as exc:
        return "ProxyProtocolError", str(exc)


def old_pack(text: str) -> bytes:
    """proxynet.pack_ip as it was, on the old parsers."""
    host = text.partition("%")[0]
    try:
        if ":" in host:
            return old_ip.parse_ipv6(host).to_bytes(16, "big")
        return old_ip.parse_ipv4(host).to_bytes(4, "big")
    except rules.RuleError:
        family = "IPv6" if ":" in host else "IPv4"
        raise ProxyProtocolError("address", f"invalid {family} address {host[:40]!r}") from None


def agree(text: str) -> None:
    assert outcome(rules.parse_ip, text) == outcome(old_ip.parse_ip, text)
    assert outcome(rules.parse_prefix, text) == outcome(old_ip.parse_prefix, text)
    assert outcome(rules.parse_peer, text) == outcome(old_ip.parse_ip, text) or text.startswith(
        "pid:"
    )
    assert outcome(proxynet.pack_ip, text) == outcome(old_pack, text)


@settings(max_examples=2000)
@given(ADDRESS_TEXT | MUTATED)
@example("::ffff:1.2.3.4")
@example("1:2:3:4:5:6:7::")
@example("::1:2:3:4:5:6:7")
@example("1:2:3:4::5:6:7:8")
@example("1::2::3")
@example(":::")
@example("01.2.3.4")
@example("1.2.3.4%eth0")
@example("fe80::1%eth0")
@example("fe80::1%")
@example("::1.2.3")
@example("::1.2.3.4.5")
@example("10.0.0.0/08")
@example("::/0")
@example("::ffff:0:0/95")
@example("1.2.3.4/32/")
def test_text_is_parsed_as_before(text: str) -> None:
    agree(text)


@settings(max_examples=1000)
@given(ADDRESSES)
def test_every_form_of_an_address_is_parsed_as_before(address: ipaddress._BaseAddress) -> None:
    forms = [str(address)]
    if isinstance(address, ipaddress.IPv6Address):
        forms += [address.exploded, address.exploded.upper(), f"{address}%lo"]
        if address.ipv4_mapped is not None:
            forms.append(f"::ffff:{address.ipv4_mapped}")
    for text in forms:
        agree(text)


@settings(max_examples=1000)
@given(NETWORKS, st.integers(0, 1))
def test_networks_are_parsed_as_before(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network, host_bit: int
) -> None:
    text = str(network)
    if host_bit and network.prefixlen < network.max_prefixlen:  # bits past the prefix
        text = f"{ipaddress.ip_address(int(network.network_address) + 1)}/{network.prefixlen}"
    agree(text)
    assert outcome(proxynet.parse_network, text) == outcome(old_network, text)


def old_network(text: str) -> tuple[bytes, int]:
    """proxynet.parse_network as it was, on the old parsers."""
    host, slash, prefix_text = text.partition("/")
    packed = old_pack(host)
    bits = len(packed) * 8
    if slash:
        if not (prefix_text.isascii() and prefix_text.isdigit()) or int(prefix_text) > bits:
            raise ProxyProtocolError("address", f"invalid prefix length in {text!r}")
        prefix = int(prefix_text)
    else:
        prefix = bits
    if len(packed) == 4:
        packed, prefix = proxynet.as_ipv6(packed), prefix + 96
    return packed, prefix


@settings(max_examples=1000)
@given(st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16))
@example(bytes(16))
@example(bytes(10) + b"\xff\xff" + bytes(4))
@example(b"\0\1" + bytes(14))
@example(bytes(15) + b"\1")
@example(b"\0\1\0\0\0\1\0\0\0\0\0\1\0\0\0\0")
def test_packed_addresses_are_written_as_before(packed: bytes) -> None:
    assert proxy.format_ip(packed) == old_ip.format_ip(packed)


@pytest.mark.parametrize("text", ["127.0.0.1", "::1", "::ffff:10.1.2.3", "2001:db8::7"])
def test_rules_match_as_before(text: str) -> None:
    for prefix in ("127.0.0.0/8", "::/0", "::1", "10.0.0.0/8", "2001:db8::/32", "0.0.0.0/0"):
        network, mask = rules.parse_prefix(prefix)
        old_network_, old_mask = old_ip.parse_prefix(prefix)
        assert (rules.parse_ip(text) & mask == network) == (
            old_ip.parse_ip(text) & old_mask == old_network_
        )
