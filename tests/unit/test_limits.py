"""The admission policy with a fake clock: token buckets, per-source limits, timers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkserve.core.gate import (
    QUESTION_SIZE,
    Gate,
    Timers,
    TokenBuckets,
    decode_answer,
    decode_question,
    encode_answer,
    encode_denied,
    encode_question,
    parse_rate,
    source_key,
)
from forkserve.core.rules import RuleSet, command_line_rule, parse_ip


def test_rate_spec() -> None:
    assert parse_rate("10/1") == (10, 1.0)
    assert parse_rate("30/60") == (30, 60.0)
    assert parse_rate("5/0.5") == (5, 0.5)
    for bad in [
        "10",
        "0/1",
        "10/0",
        "-1/1",
        "1/-1",
        "a/1",
        "1/x",
        "1/inf",
        "1/nan",
        "\u0661/1",
        "",
    ]:
        with pytest.raises(ValueError, match="N/SECONDS"):
            parse_rate(bad)


def test_a_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    buckets = TokenBuckets(3, 1.5)  # 2 tokens a second
    assert [buckets.take(1, 0.0) for _ in range(4)] == [True, True, True, False]
    assert not buckets.take(1, 0.4)  # 0.8 of a token
    assert buckets.take(1, 0.5)  # 1.0
    assert not buckets.take(1, 0.5)
    assert buckets.take(2, 0.5)  # another source is untouched


def test_full_buckets_are_evicted() -> None:
    buckets = TokenBuckets(2, 10.0)
    for key in range(1000):
        buckets.take(key, key * 0.01)  # 1000 sources over 10 seconds
    assert len(buckets) == 1000
    buckets.take(5000, 10.005)
    assert len(buckets) == 1000  # key 0's bucket (last used at 0.0) is full again
    buckets.take(5001, 100.0)
    assert len(buckets) == 1


def test_bucket_count_is_capped_least_recently_used_first() -> None:
    buckets = TokenBuckets(1, 1000.0, max_buckets=3)
    for key in (1, 2, 3):
        assert buckets.take(key, 0.0)
    assert not buckets.take(1, 1.0)  # 1 is now the most recently used
    assert buckets.take(4, 1.0)
    assert list(buckets.buckets) == [3, 1, 4]


@given(
    st.lists(st.tuples(st.integers(0, 3), st.floats(0, 5, allow_nan=False)), max_size=200),
    st.integers(1, 5),
    st.floats(0.1, 10),
)
def test_never_more_than_the_rate_allows(
    events: list[tuple[int, float]], count: int, period: float
) -> None:
    """In any window of ``period`` seconds a source gets at most ``count`` tokens plus
    what refills during it: at most ``2 * count`` (burst, then the refill)."""
    buckets = TokenBuckets(count, period, max_buckets=10)
    now = 0.0
    allowed: dict[int, list[float]] = {}
    for key, step in events:
        now += step
        if buckets.take(key, now):
            allowed.setdefault(key, []).append(now)
    for times in allowed.values():
        for i, start in enumerate(times):
            inside = [t for t in times[i:] if t < start + period]
            assert len(inside) <= 2 * count
        assert len(buckets) <= 10


def test_ipv6_sources_group_by_prefix_and_ipv4_by_address() -> None:
    a, b = parse_ip("2001:db8:0:1::7"), parse_ip("2001:db8:0:1:ffff::9")
    assert source_key(a) == source_key(b)
    assert source_key(a, 128) != source_key(b, 128)
    assert source_key(parse_ip("2001:db8:0:2::7")) != source_key(a)
    assert source_key(parse_ip("10.0.0.1")) != source_key(parse_ip("10.0.0.2"))
    assert source_key(parse_ip("::ffff:10.0.0.1")) == source_key(parse_ip("10.0.0.1"))
    assert source_key(parse_ip("::")) != source_key(parse_ip("0.0.0.0"))


def test_gate_rules_then_per_ip_then_rate() -> None:
    rules = RuleSet([command_line_rule("deny", "10.0.0.0/8")], default_allow=True)
    gate = Gate(rules, per_ip=2, rate=(3, 10.0))
    open_now: dict[int, int] = {}

    def check(host: str, now: float) -> str:
        verdict = gate.check(host, now, lambda key: open_now.get(key, 0))
        if verdict.allowed:
            open_now[verdict.source] = open_now.get(verdict.source, 0) + 1
            return "ok"
        return f"{verdict.reason}:{verdict.rule}"

    assert check("10.1.1.1", 0.0) == "deny:--deny=10.0.0.0/8"
    assert [check("192.0.2.1", 0.0) for _ in range(3)] == ["ok", "ok", "per-ip:default"]
    open_now.clear()  # both ended; the per-ip refusal took no token
    assert [check("192.0.2.1", 0.0) for _ in range(2)] == ["ok", "rate:default"]
    open_now.clear()
    assert check("192.0.2.1", 3.4) == "ok"  # a token refilled after 10/3 seconds
    assert check("::ffff:192.0.2.2", 3.4) == "ok"


def test_gate_without_rules_or_limits_allows_with_a_source() -> None:
    gate = Gate()
    verdict = gate.check("::1", 0.0, lambda key: 99)
    assert verdict.allowed
    assert verdict.source == source_key(parse_ip("::1"))
    assert not gate.limits_sources
    assert gate.check("not-an-ip", 0.0, lambda key: 0).source == -1


def test_timers_skip_what_ended_and_expire_in_order() -> None:
    live = {1, 2, 3}
    timers = Timers(5.0, lambda key: key in live)
    for key, start in ((1, 0.0), (2, 1.0), (3, 2.0)):
        timers.add(key, start)
    assert timers.next_deadline() == 5.0
    live.discard(1)
    assert timers.next_deadline() == 6.0
    assert timers.due(6.5) == [2]
    assert timers.due(6.9) == []
    live.clear()
    assert timers.due(100.0) == []
    assert timers.next_deadline() is None
    assert len(timers) == 0


def test_a_new_gate_takes_over_the_rate_buckets() -> None:
    old = Gate(rate=(2, 10.0))
    source = old.source("192.0.2.1")
    assert [old.buckets.take(source, 0.0) for _ in range(3)] == [True, True, False]  # type: ignore[union-attr]
    same = Gate(rate=(2, 10.0))
    same.take_over(old)
    assert not same.buckets.take(source, 1.0)  # type: ignore[union-attr]
    larger = Gate(rate=(4, 10.0))  # refills at 0.4/s from the spent bucket
    larger.take_over(same)
    assert not larger.buckets.take(source, 2.0)  # type: ignore[union-attr]
    assert larger.buckets.take(source, 4.0)  # type: ignore[union-attr]
    assert larger.buckets.take(old.source("192.0.2.2"), 4.0)  # type: ignore[union-attr]
    unlimited = Gate()
    unlimited.take_over(larger)  # no rate now: nothing to keep
    assert unlimited.buckets is None
    Gate(rate=(1, 1.0)).take_over(unlimited)  # a rate turned on starts afresh


@given(st.integers(min_value=-1, max_value=2**129), st.text(max_size=60))
def test_questions_and_answers_round_trip(source: int, peer: str) -> None:
    clean = peer.encode("utf-8", "backslashreplace").decode()
    assert decode_question(encode_question(source, peer)) == (source, clean)
    assert decode_question(encode_denied(peer)) == (None, clean)
    assert len(encode_question(2**129, "[ffff:" + "ffff:" * 6 + "ffff%eth0]:65535")) < QUESTION_SIZE


def test_answers() -> None:
    assert [decode_answer(encode_answer(n)) for n in (0, 1, 7)] == [0, 1, 7]
    assert encode_answer(0) == b"no"
    for junk in (b"", b"ok", b"ok x", b"yes 3", b"\xff"):
        assert decode_answer(junk) == 0
    with pytest.raises(ValueError):
        decode_question(b"x 127.0.0.1:1")
