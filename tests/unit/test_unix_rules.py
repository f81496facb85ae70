"""Unix-domain clients in the access rules and per-source limits: uid:N and gid:N
rules, and --per-ip counted per uid (issue 15)."""

from __future__ import annotations

import pytest

from forkserve.core.address import format_credentials
from forkserve.core.gate import Gate
from forkserve.core.rules import (
    RuleError,
    RuleSet,
    command_line_rule,
    parse_match,
    parse_peer,
    parse_rules,
    unix_address,
)

ROOT = format_credentials((10, 0, 0))
ALICE = format_credentials((11, 1000, 100))
ALICE_AGAIN = format_credentials((12, 1000, 100))
BOB = format_credentials((13, 1001, 100))
# uid 65535: its bits are where an IPv4-mapped address has 0xffff, so an IPv4 rule
# would match it without UNIX_BIT in every IP rule's mask.
NOBODY16 = format_credentials((14, 0xFFFF, 0))


def decide(rules: RuleSet, peer: str) -> str:
    return rules.match(parse_peer(peer)).label


def test_uid_and_gid_rules_match_unix_clients_only() -> None:
    rules = RuleSet(
        parse_rules(b"uid:1001:deny\ngid:100:allow,ROLE=staff\n0.0.0.0/0:allow\n::/0:allow\n", "r"),
        default_allow=False,
    )
    assert decide(rules, BOB) == "r:1"
    assert decide(rules, ALICE) == "r:2"
    assert rules.match(parse_peer(ALICE)).env == {"ROLE": "staff"}
    assert decide(rules, ROOT) == "default"
    assert decide(rules, NOBODY16) == "default"
    assert decide(rules, "10.0.0.1") == "r:3"
    assert decide(rules, "::1") == "r:4"


def test_an_empty_rule_matches_everyone() -> None:
    rules = RuleSet(parse_rules(b":deny\n", "r"), default_allow=True)
    assert decide(rules, ALICE) == "r:1"


def test_command_line_uid_rule() -> None:
    rule = command_line_rule("deny", " uid:0 ")
    assert rule.label == "--deny=uid:0" and not rule.allow
    assert parse_peer(ROOT) & rule.mask == rule.network
    assert parse_peer(ALICE) & rule.mask != rule.network


@pytest.mark.parametrize("text", ["uid:", "uid:x", "gid:-1", "uid:4294967296", "uid:\u0661"])
def test_bad_id_rules(text: str) -> None:
    with pytest.raises(RuleError):
        parse_match(text)


@pytest.mark.parametrize("text", ["pid:1", "pid:1,uid:x,gid:0", "pid:1,gid:0"])
def test_bad_peers(text: str) -> None:
    with pytest.raises(RuleError):
        parse_peer(text)


def test_per_ip_counts_per_uid() -> None:
    gate = Gate(per_ip=1)
    open_now: dict[int, int] = {}
    first = gate.check(ALICE, 0.0, lambda source: open_now.get(source, 0))
    assert first.allowed
    open_now[first.source] = 1
    again = gate.check(ALICE_AGAIN, 0.0, lambda source: open_now.get(source, 0))
    assert (again.allowed, again.reason) == (False, "per-ip")
    other = gate.check(BOB, 0.0, lambda source: open_now.get(source, 0))
    assert other.allowed and other.source != first.source
    assert first.source == gate.source(ALICE) == unix_address(1000, 0)


def test_rate_counts_per_uid() -> None:
    gate = Gate(rate=(1, 60.0))
    assert gate.check(ALICE, 0.0, lambda source: 0).allowed
    assert gate.check(ALICE_AGAIN, 0.0, lambda source: 0).reason == "rate"
    assert gate.check(BOB, 0.0, lambda source: 0).allowed
