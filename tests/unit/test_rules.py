"""Access rules: the address parsers against ipaddress, the rules file, matching."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from forkserve.core.rules import (
    IPV6_BIT,
    MAPPED,
    RuleError,
    RuleSet,
    command_line_rule,
    default_allows,
    parse_ip,
    parse_prefix,
    parse_rules,
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def oracle(text: str) -> int | None:
    """What ipaddress makes of ``text``, in our space (IPv4 mapped); None if invalid."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 4:
        return MAPPED | int(address)
    assert isinstance(address, ipaddress.IPv6Address)
    if address.ipv4_mapped is not None:
        return MAPPED | int(address.ipv4_mapped)
    return int(address) | IPV6_BIT


ADDRESS_TEXT = st.text(alphabet="0123456789abcdefABCDEF:.", max_size=45)


@given(ADDRESS_TEXT)
@example("::ffff:1.2.3.4")
@example("::1.2.3.4")
@example("1::1.2.3.4")
@example("1:::1.2.3.4")
@example("1:2:3:4:5:6:1.2.3.4")
@example("1:2:3:4:5:6:7:1.2.3.4")
@example("::1:2:3:4:5:6:7")
@example("1:2:3:4:5:6:7::")
@example("01.2.3.4")
@example("1.2.3.4:")
@example(":1.2.3.4")
def test_parse_ip_agrees_with_ipaddress(text: str) -> None:
    expected = oracle(text)
    if expected is None:
        with pytest.raises(RuleError):
            parse_ip(text)
    else:
        assert parse_ip(text) == expected


@given(st.ip_addresses())
def test_every_address_in_every_form_parses(address: Address) -> None:
    expected = oracle(str(address))
    assert parse_ip(str(address)) == expected
    if address.version == 6:
        assert isinstance(address, ipaddress.IPv6Address)
        assert parse_ip(address.exploded) == expected
        assert parse_ip(address.exploded.upper()) == expected


def test_mapped_peer_is_the_ipv4_address() -> None:
    assert parse_ip("::ffff:127.0.0.2") == parse_ip("127.0.0.2")
    assert parse_ip("fe80::1%eth0") == parse_ip("fe80::1")


@given(st.ip_addresses(), st.integers(0, 128))
def test_prefixes_match_what_ipaddress_says(address: Address, length: int) -> None:
    length = min(length, address.max_prefixlen)
    network = ipaddress.ip_network(f"{address}/{length}", strict=False)
    net, mask = parse_prefix(str(network))
    mapped = isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None
    # An IPv6 prefix wider than ::ffff:0:0/96 is for IPv6 clients, never IPv4 ones.
    assert (parse_ip(str(address)) & mask == net) is not (mapped and length < 96)
    outside = int(network.broadcast_address) + 1
    if outside <= (2**address.max_prefixlen - 1):
        assert parse_ip(str(ipaddress.ip_address(outside))) & mask != net


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("10.0.0.1/8", "bits set past its prefix"),
        ("10.0.0.0/33", "over 32"),
        ("::/129", "over 128"),
        ("10.0.0.0/", "invalid prefix length"),
        ("10.0.0.0/+8", "invalid address"),
        ("10.0.0/8", "invalid IPv4"),
        ("fe80::1%eth0", "invalid address"),
        ("example.com", "invalid address"),
        ("", "empty address"),
    ],
)
def test_bad_prefixes(text: str, reason: str) -> None:
    with pytest.raises(RuleError, match=reason):
        parse_prefix(text)


def test_ipv4_rules_match_mapped_peers_and_not_ipv6() -> None:
    rules = RuleSet([command_line_rule("deny", "127.0.0.0/8")], default_allow=True)
    assert not rules.match(parse_ip("::ffff:127.0.0.1")).allow
    assert rules.match(parse_ip("::1")).allow
    assert rules.match(parse_ip("128.0.0.1")).allow


def test_first_match_wins_then_the_default() -> None:
    rules = RuleSet(
        [command_line_rule("allow", "10.1.0.0/16"), command_line_rule("deny", "10.0.0.0/8")],
        default_allow=False,
    )
    assert rules.match(parse_ip("10.1.2.3")).label == "--allow=10.1.0.0/16"
    assert rules.match(parse_ip("10.2.2.3")).label == "--deny=10.0.0.0/8"
    assert rules.match(parse_ip("11.0.0.1")).label == "default"
    assert not rules.match(parse_ip("11.0.0.1")).allow


RULES_FILE = b"""\
# office
  10.1.0.0/16:allow,ROLE="office, main",RELAYCLIENT=
10.0.0.0/8:deny
2001:db8::/32:allow,V6=yes
::1:allow
:::deny
:allow,WHO=anyone\r
"""


def test_rules_file() -> None:
    rules = parse_rules(RULES_FILE, "r.rules")
    assert [r.label for r in rules] == [f"r.rules:{n}" for n in (2, 3, 4, 5, 6, 7)]
    assert rules[0].env == {"ROLE": "office, main", "RELAYCLIENT": ""}
    assert rules[2].env == {"V6": "yes"}
    assert rules[4].network == IPV6_BIT  # "::" itself
    assert rules[5].mask == 0 and rules[5].env == {"WHO": "anyone"}
    ruleset = RuleSet(rules, default_allow=False)
    assert ruleset.match(parse_ip("10.1.9.9")).env["ROLE"] == "office, main"
    assert not ruleset.match(parse_ip("10.9.9.9")).allow
    assert ruleset.match(parse_ip("2001:db8::7")).env == {"V6": "yes"}
    assert ruleset.match(parse_ip("192.0.2.1")).env == {"WHO": "anyone"}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"10.0.0.0/8", "expected ADDRESS:allow"),
        (b"10.0.0.0/8:permit", "expected ADDRESS:allow"),
        (b"10.0.0.0/8:allowed", "expected ADDRESS:allow"),
        (b"host.example:allow", "invalid address"),
        (b"10.0.0.0/8:deny,A=1", "deny rule sets no variables"),
        (b"1.2.3.4:allow,A", "expected NAME=VALUE"),
        (b"1.2.3.4:allow,1A=x", "invalid variable name"),
        (b'1.2.3.4:allow,A="x', "no closing quote"),
        (b'1.2.3.4:allow,A="x"y', "expected ','"),
        (b'1.2.3.4:allow,A=x"', "unbalanced quote"),
        (b"1.2.3.4:allow,A=1,A=2", "A set twice"),
        (b"1.2.3.4:allow,A=\x00", "NUL"),
        (b"1.2.3.4:allow,A=\xff", "not UTF-8"),
        (b"1.2.3.4:allow,", "expected NAME=VALUE"),
    ],
)
def test_bad_lines_name_their_line(line: bytes, reason: str) -> None:
    with pytest.raises(RuleError, match=reason) as info:
        parse_rules(b"# ok\n\n" + line + b"\n:allow\n", "f")
    assert info.value.line == 3


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
@example(b':allow,A=":deny,"')
def test_any_input_is_rules_or_a_clean_error(data: bytes) -> None:
    lines = data.split(b"\n")
    try:
        rules = parse_rules(data, "f")
    except RuleError as exc:
        assert 1 <= exc.line <= len(lines)
        assert exc.reason and "\n" not in exc.reason
        return
    for rule in rules:
        assert rule.network & ~rule.mask == 0
        number = int(rule.label.rpartition(":")[2])
        assert lines[number - 1].strip()


@given(
    st.lists(
        st.tuples(
            st.ip_addresses().flatmap(
                lambda a: st.builds(
                    lambda n: ipaddress.ip_network(f"{a}/{n}", strict=False),
                    st.integers(0, a.max_prefixlen),
                )
            ),
            st.booleans(),
            st.dictionaries(
                st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True),
                st.text(
                    alphabet=st.characters(blacklist_characters='"\0\n\r', codec="utf-8"),
                    max_size=8,
                ),
                max_size=3,
            ),
        ),
        max_size=5,
    ),
    st.ip_addresses(),
)
def test_generated_files_match_like_ipaddress(
    rules: list[tuple[Network, bool, dict[str, str]]],
    peer: Address,
) -> None:
    lines = []
    for network, allow, env in rules:
        action = "allow" if allow else "deny"
        extra = "".join(f',{k}="{v}"' for k, v in env.items()) if allow else ""
        lines.append(f"{network}:{action}{extra}")
    parsed = parse_rules("\n".join(lines).encode(), "f")
    decision = RuleSet(parsed, default_allow=True).match(parse_ip(str(peer)))
    expected = next(
        (i for i, (net, _, _) in enumerate(rules) if contains(net, peer)),
        None,
    )
    if expected is None:
        assert decision.label == "default"
    else:
        assert decision.label == f"f:{expected + 1}"
        assert decision.allow == rules[expected][1]
        if rules[expected][1]:
            assert decision.env == rules[expected][2]


MAPPED_NET = ipaddress.IPv6Network("::ffff:0:0/96")


def contains(network: Network, peer: Address) -> bool:
    """Our semantics in ipaddress terms: IPv4-mapped addresses and prefixes are IPv4."""
    if is_v4(network) != is_v4(peer):
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    if isinstance(network, ipaddress.IPv6Network) and is_v4(network):
        first = ipaddress.IPv6Address(network.network_address).ipv4_mapped
        network = ipaddress.IPv4Network(f"{first}/{network.prefixlen - 96}")
    return peer in network


def is_v4(thing: Network | Address) -> bool:
    if isinstance(thing, ipaddress.IPv6Network):
        return thing.prefixlen >= 96 and thing.subnet_of(MAPPED_NET)
    if isinstance(thing, ipaddress.IPv6Address):
        return thing.ipv4_mapped is not None
    return True


def test_ipv6_prefixes_never_match_ipv4_clients_but_mapped_ones_do() -> None:
    rules = RuleSet(
        [command_line_rule("deny", "::/0"), command_line_rule("allow", "::ffff:10.0.0.0/104")],
        default_allow=False,
    )
    assert not rules.match(parse_ip("::1")).allow
    assert rules.match(parse_ip("10.1.2.3")).allow
    assert rules.match(parse_ip("::ffff:10.1.2.3")).allow
    assert rules.match(parse_ip("11.1.2.3")).label == "default"


def test_default_policy() -> None:
    deny = command_line_rule("deny", "10.0.0.0/8")
    allow = command_line_rule("allow", "10.0.0.0/8")
    assert default_allows([deny], None)
    assert not default_allows([deny, allow], None)
    assert default_allows([allow], "allow")
    assert not default_allows([], "deny")
    assert default_allows([], None)
