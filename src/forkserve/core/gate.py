"""Admission policy: access rules, connections per source, connection rate per source;
and the lifetime timers (pure: no I/O, time is a parameter).

The parent asks ``Gate.check`` about each connection it accepted, before forking: a
refused one costs no process. Everything here takes ``now`` from the caller, so the
unit tests drive it with a fake clock.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from forkserve.core.rules import (
    IPV6_BIT,
    UID_MASK,
    UNIX_BIT,
    Rule,
    RuleError,
    RuleSet,
    is_ipv4,
    parse_peer,
    prefix_mask,
)

# IPv6 clients count against their /64 by default: one subscriber or host usually
# holds a whole /64 (RFC 6177), so counting single addresses would let one client
# open a connection from each of 2**64 addresses.
DEFAULT_IPV6_PREFIX = 64
# The longest duration a setting may have (--grace, --max-lifetime, every timeout):
# poll(2) and epoll_wait(2) take their timeout in milliseconds as a C int, so Python's
# poll raises OverflowError past 2**31 - 1 ms (24.8 days), and a socket timeout past
# time_t's range; the parent's loop died with a traceback (issue 12, finding 4). A
# round bound below that, checked where settings are parsed.
MAX_SECONDS = 2_000_000
MAX_SECONDS_TEXT = f"{MAX_SECONDS} seconds (about 23 days)"
# The rate limiter forgets a source once its bucket is full again; beyond this many
# sources at once the least recently seen is forgotten early (it gets a full bucket
# back: the limiter fails open for that source rather than grow without bound).
MAX_BUCKETS = 100_000


def source_key(address: int, ipv6_prefix: int = DEFAULT_IPV6_PREFIX) -> int:
    """What a connection counts against: the IPv4 address, the IPv6 prefix, or a
    Unix socket's client's uid (s6-ipcserver's per-uid limit).

    Args:
        address: from ``parse_peer``.
        ipv6_prefix: IPv6 addresses are grouped by their first this many bits.
    """
    if is_ipv4(address):
        return address
    if address & UNIX_BIT:
        return address & UID_MASK
    return address & (prefix_mask(ipv6_prefix) | IPV6_BIT)


def parse_rate(text: str) -> tuple[int, float]:
    """``N/SECONDS`` (``10/1``, ``30/60``, ``5/0.5``) as ``(count, period)``.

    Raises:
        ValueError: not of that form, or not positive.
    """
    count_text, slash, period_text = text.partition("/")
    if not slash or not count_text.isdigit() or not count_text.isascii():
        raise ValueError(f"expected N/SECONDS, like 10/1, not {text!r}")
    try:
        period = float(period_text)
    except ValueError:
        raise ValueError(f"expected N/SECONDS, like 10/1, not {text!r}") from None
    count = int(count_text)
    if count < 1 or not 0 < period < float("inf"):
        raise ValueError(f"expected N/SECONDS with N and SECONDS above 0, not {text!r}")
    return count, period


class TokenBuckets:
    """A token bucket per source: ``count`` connections per ``period`` seconds.

    A bucket holds at most ``count`` tokens and refills at ``count / period`` tokens a
    second; each connection takes one, and with none left the source is refused until
    one has refilled. Only that source pauses: the listener never does (systemd's
    TriggerLimit stopped the whole socket, a denial of service by design).

    Buckets are kept in least-recently-used order; one untouched for ``period`` seconds
    is full again, which is what a missing bucket means, so it is dropped: memory is
    bounded by the sources seen in the last period (and by ``max_buckets``).
    """

    def __init__(self, count: int, period: float, max_buckets: int = MAX_BUCKETS) -> None:
        self.count = count
        self.period = period
        self.refill = count / period
        self.max_buckets = max_buckets
        # key -> [tokens, last update]
        self.buckets: collections.OrderedDict[int, list[float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.buckets)

    def take(self, key: int, now: float) -> bool:
        """Take a token for ``key`` at time ``now``; False when it has none left."""
        self.evict(now)
        bucket = self.buckets.get(key)
        if bucket is None:
            tokens = float(self.count)
            bucket = self.buckets[key] = [tokens, now]
        else:
            tokens = min(float(self.count), bucket[0] + (now - bucket[1]) * self.refill)
            self.buckets.move_to_end(key)
        allowed = tokens >= 1.0
        bucket[0], bucket[1] = tokens - 1.0 if allowed else tokens, now
        if len(self.buckets) > self.max_buckets:
            self.buckets.popitem(last=False)
        return allowed

    def adopt(self, old: TokenBuckets) -> None:
        """Carry on with ``old``'s buckets. Under a different rate they stay valid:
        ``take`` clamps a bucket to this burst and refills it at this pace, and a
        bucket untouched for this period is full under this rate too."""
        self.buckets = old.buckets

    def evict(self, now: float) -> None:
        """Drop the buckets that are full again (untouched for a whole period)."""
        buckets = self.buckets
        while buckets:
            oldest = next(iter(buckets.values()))
            if now - oldest[1] < self.period:
                return
            buckets.popitem(last=False)


class Verdict:
    """What the gate decided for one connection.

    Attributes:
        allowed: serve it.
        reason: when refused: "deny" (a rule), "per-ip" or "rate" (a limit).
        rule: the deciding rule's label (``FILE:LINE``, ``--deny=PREFIX``, ``default``).
        env: variables for the connection's program or handler (allow rules).
        source: the key it counts against (``source_key``).
    """

    __slots__ = ("allowed", "env", "reason", "rule", "source")

    def __init__(
        self, allowed: bool, reason: str, rule: str, env: dict[str, str], source: int
    ) -> None:
        self.allowed = allowed
        self.reason = reason
        self.rule = rule
        self.env = env
        self.source = source


NO_RULE = Rule(0, 0, True, "")


class Gate:
    """The parent's admission policy: rules first, then the per-source limits.

    Args:
        rules: the access rules, or None to allow every address.
        per_ip: connections at once per source; 0 for no limit.
        rate: ``(count, period)``: new connections per source per period, or None.
        ipv6_prefix: how IPv6 sources are grouped (see ``source_key``).
    """

    def __init__(
        self,
        rules: RuleSet | None = None,
        per_ip: int = 0,
        rate: tuple[int, float] | None = None,
        ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
    ) -> None:
        self.rules = rules
        self.per_ip = per_ip
        self.buckets = TokenBuckets(*rate) if rate is not None else None
        self.ipv6_prefix = ipv6_prefix

    def take_over(self, old: Gate) -> None:
        """Keep ``old``'s rate buckets (a reload builds a new gate): a SIGHUP must not
        hand every source a fresh burst. With the rate changed they carry on under
        the new one: a bucket is clamped to the new burst and refills at the new pace.
        """
        if self.buckets is not None and old.buckets is not None:
            self.buckets.adopt(old.buckets)

    @property
    def limits_sources(self) -> bool:
        """Whether decisions need the count of open connections or a clock."""
        return bool(self.per_ip) or self.buckets is not None

    def source(self, host: str) -> int:
        """The source key of a peer's host as ``getpeername()`` wrote it; -1 for a
        host that is not an IP address (it then matches no prefix rule)."""
        try:
            return source_key(parse_peer(host), self.ipv6_prefix)
        except RuleError:
            return -1

    def check_rules(self, host: str) -> Verdict:
        """The rules' decision alone (what a prefork worker can decide by itself)."""
        try:
            address = parse_peer(host)
        except RuleError:
            address = -1
        rule = self.rules.match(address) if self.rules is not None and address >= 0 else NO_RULE
        source = source_key(address, self.ipv6_prefix) if address >= 0 else -1
        return Verdict(rule.allow, "" if rule.allow else "deny", rule.label, rule.env, source)

    def check_limits(self, verdict: Verdict, now: float, open_from: Callable[[int], int]) -> None:
        """Apply the per-source limits to a verdict the rules allowed, in place.

        The rate limiter's token is taken only from a connection that is under the
        per-ip limit, so a source at its limit does not also drain its bucket.
        """
        if self.per_ip and open_from(verdict.source) >= self.per_ip:
            verdict.allowed, verdict.reason = False, "per-ip"
        elif self.buckets is not None and not self.buckets.take(verdict.source, now):
            verdict.allowed, verdict.reason = False, "rate"

    def check(self, host: str, now: float, open_from: Callable[[int], int]) -> Verdict:
        """Decide for a connection from ``host``, given the connections now open."""
        verdict = self.check_rules(host)
        if verdict.allowed:
            self.check_limits(verdict, now, open_from)
        return verdict


class Policy:
    """What the parent enforces per connection, besides its process model's limit.

    Args:
        gate: access rules and per-source limits, decided before fork.
        reject_message: bytes written (without blocking) to a client refused by a
            per-source limit, before its connection is closed.
        max_lifetime: seconds a connection may last (0: no limit); then its process
            group gets SIGTERM, and SIGKILL parent.admission.LIFETIME_KILL_AFTER
            seconds later.
        proxy: connections start with a PROXY header: the gate judges the client it
            names, in the connection's process once the header is read (see child.ask).
    """

    __slots__ = ("gate", "max_lifetime", "proxy", "reject_message")

    def __init__(
        self,
        gate: Gate | None = None,
        reject_message: bytes = b"",
        max_lifetime: float = 0.0,
        *,
        proxy: bool = False,
    ) -> None:
        self.gate = gate if gate is not None else Gate()
        self.reject_message = reject_message
        self.max_lifetime = max_lifetime
        self.proxy = proxy


# -- the question a connection's process asks the supervisor (see child.ask) ---------------

# The most a question or an answer takes (a peer is at most an IPv6 address with a
# scope and a port).
QUESTION_SIZE = 256


def encode_question(source: int, peer: str) -> bytes:
    """``SOURCE PEER``: may a connection counted against ``source`` be served?"""
    return f"{source} {peer}".encode("utf-8", "backslashreplace")


def encode_denied(peer: str) -> bytes:
    """``D PEER``: the rules denied the connection from ``peer``."""
    return f"D {peer}".encode("utf-8", "backslashreplace")


def decode_question(data: bytes) -> tuple[int | None, str]:
    """``(source, peer)``; source None for a ``D`` report.

    Raises:
        ValueError: not what ``encode_question`` or ``encode_denied`` wrote.
    """
    head, _, peer = data.decode("utf-8", "replace").partition(" ")
    return (None if head == "D" else int(head)), peer


def encode_answer(connnum: int) -> bytes:
    """``ok CONNNUM`` for a connection admitted as its source's ``connnum``-th, or
    ``no`` (``connnum`` 0)."""
    return f"ok {connnum}".encode() if connnum else b"no"


def decode_answer(data: bytes) -> int:
    """The admitted connection's TCPCONNNUM, or 0 when refused."""
    kind, _, count = data.decode("ascii", "replace").partition(" ")
    return int(count) if kind == "ok" and count.isdigit() else 0


class Timers:
    """Deadlines that are all ``delay`` after their start, in start order: the next
    deadline is the oldest entry, and adding, expiring or discarding one is O(1).

    Keyed by what they time (a connection, never a pid the kernel may give to the
    next one: issue 12, finding 5); ``discard`` drops a timer whose connection ended,
    so finished connections never wait in the queue until their deadline. An
    ordered dict, not a deque, for that: its first entry and a removal by key are
    both O(1). ``current(key)``, if given, may still rule out a timer at its turn.
    """

    def __init__(self, delay: float, current: Callable[[object], bool] | None = None) -> None:
        self.delay = delay
        self.current = current
        self.deadlines: collections.OrderedDict[object, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.deadlines)

    def add(self, key: object, now: float) -> None:
        self.deadlines[key] = now + self.delay

    def discard(self, key: object) -> None:
        """Forget ``key``'s timer, if it has one (its connection ended)."""
        self.deadlines.pop(key, None)

    def _counts(self, key: object) -> bool:
        return self.current is None or self.current(key)

    def next_deadline(self) -> float | None:
        """The earliest deadline that still counts, or None."""
        deadlines = self.deadlines
        while deadlines:
            key, deadline = next(iter(deadlines.items()))
            if self._counts(key):
                return deadline
            deadlines.popitem(last=False)
        return None

    def due(self, now: float) -> list[object]:
        """Remove and return the keys whose deadline has come and that still count."""
        expired = []
        deadlines = self.deadlines
        while deadlines:
            key, deadline = next(iter(deadlines.items()))
            if deadline > now:
                break
            deadlines.popitem(last=False)
            if self._counts(key):
                expired.append(key)
        return expired
