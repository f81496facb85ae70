"""What admission costs the supervisor per connection: the access rules' verdict on N
client addresses (core.gate.Gate.check: the peer's text parsed, the rules matched,
the per-source limits applied), timed in-process.

Times, interleaved in one process (best of R passes each): Gate.check whole; the
peer's parse with ``ipaddress`` (core.rules.parse_ip) and with the private parser it
replaced (tests/unit/old_ip.py), each followed by the int matcher (RuleSet.match);
and ``ipaddress`` objects matched with ``address in network``, the matcher the int
one was weighed against. ``PYTHONPATH=OTHER/src`` runs another tree's Gate.check.

Usage: ``python benchmarks/admission_cost.py [--count N] [--repeat R]``
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import forkserve
from forkserve.core import rules
from forkserve.core.gate import Gate
from forkserve.core.rules import RuleSet, default_allows, parse_rules

RULES = b"""\
10.0.0.0/8:deny
192.168.0.0/16:deny
172.16.0.0/12:deny
2001:db8::/32:deny
fe80::/10:deny
100.64.0.0/10:deny
198.51.100.0/24:deny
203.0.113.0/24:deny
::1:allow,LOCAL=1
127.0.0.0/8:allow,LOCAL=1
"""


def addresses(count: int) -> list[str]:
    """Peers as getpeername() writes them: 3 in 4 IPv4 (most from 127/8), 1 in 4 IPv6."""
    rng = random.Random(14)
    out = []
    for _ in range(count):
        if rng.random() < 0.75:
            out.append(f"127.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
        else:
            out.append(str(ipaddress.IPv6Address(rng.getrandbits(128))))
    return out


def best(functions: dict[str, Callable[[list[str]], None]], peers: list[str], repeat: int) -> None:
    """Print the best of ``repeat`` passes over ``peers`` of each function (the passes
    interleaved, so a busy machine slows them alike), in microseconds per peer."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            start = time.perf_counter()
            function(peers)
            times[name].append(time.perf_counter() - start)
    for name, runs in times.items():
        print(f"  {name:44} {min(runs) / len(peers) * 1e6:6.2f} us/peer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    peers = addresses(args.count)
    parsed = parse_rules(RULES, "bench")
    gate = Gate(RuleSet(parsed, default_allows(parsed, None)), per_ip=100)
    ruleset = gate.rules
    assert ruleset is not None
    networks = [ipaddress.ip_network(line.rsplit(b":", 1)[0].decode()) for line in RULES.split()]

    def check(items: list[str]) -> None:
        for host in items:
            gate.check(host, 0.0, lambda _: 0)

    def new(items: list[str]) -> None:
        for host in items:
            ruleset.match(rules.parse_ip(host))

    def objects(items: list[str]) -> None:
        for host in items:
            address = ipaddress.ip_address(host)
            for network in networks:
                if address in network:
                    break

    functions: dict[str, Callable[[list[str]], None]] = {
        "Gate.check (parse, match, per-ip)": check,
        "ipaddress parse + int match": new,
    }
    old = old_parser()
    if old is not None:

        def private(items: list[str]) -> None:
            for host in items:
                ruleset.match(old(host))

        functions["private parser + int match"] = private
    functions["ipaddress objects, 'address in network'"] = objects
    print(f"forkserve from {forkserve.__file__}, Python {sys.version.split()[0]}")
    print(f"{args.count} peers, {len(parsed)} rules, best of {args.repeat}:")
    best(functions, peers, args.repeat)
    return 0


def old_parser() -> Callable[[str], int] | None:
    """The private parser ``ipaddress`` replaced (tests/unit/old_ip.py), if here."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    try:
        from tests.unit import old_ip
    except ImportError:
        return None
    return old_ip.parse_ip


if __name__ == "__main__":
    sys.exit(main())
