"""What ``forkserve bench`` counts and reports (pure: no I/O).

A ``Tally`` is what one client process counted; tallies merge; a ``Report`` is the
summary of a run, rendered as a table by ``cli.bench.run`` and as JSON by ``Report.to_json``.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from forkserve.cli.bench.verify import DATA_KINDS, Problem

EXIT_VERIFY = 1  # the server sent wrong bytes, too few, too many, or no EOF
EXIT_CONNECTIONS = 2  # every byte that came back was right, but connections failed
# Problems kept in full per process and per report; the rest are only counted.
MAX_PROBLEMS = 20
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# What one operation is, per mode.
UNITS = {"rate": "conn", "pingpong": "msg", "bulk": "conn", "hold": "conn"}


@dataclass
class Tally:
    """Counts kept by one client process (or merged from several).

    Attributes:
        ops: verified operations: connections (rate, bulk, hold) or messages (pingpong).
        verified_bytes: echoed bytes that arrived and matched.
        latencies: nanoseconds per operation (rate: connect to whole echo;
            pingpong: send to whole echo).
        established: hold: connections that completed the handshake.
        verified_start: hold: connections whose first echo was verified.
        counts: problems by kind.
        problems: the first ``MAX_PROBLEMS`` problems in full.
    """

    ops: int = 0
    verified_bytes: int = 0
    latencies: array[int] = field(default_factory=lambda: array("q"))
    established: int = 0
    verified_start: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def add_problem(self, problem: Problem) -> None:
        self.counts[problem.kind] = self.counts.get(problem.kind, 0) + 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    @property
    def error_count(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: Tally) -> None:
        self.ops += other.ops
        self.verified_bytes += other.verified_bytes
        self.latencies.extend(other.latencies)
        self.established += other.established
        self.verified_start += other.verified_start
        for kind, count in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + count
        room = MAX_PROBLEMS - len(self.problems)
        self.problems.extend(other.problems[: max(room, 0)])


def percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile ``q`` (0 < q <= 100) of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(samples_ns: Iterable[int]) -> dict[str, float] | None:
    """Percentiles, max and mean in microseconds; None without samples."""
    ordered = sorted(samples_ns)
    if not ordered:
        return None
    summary = {f"p{q:g}": percentile(ordered, q) / 1e3 for q in PERCENTILES}
    summary["max"] = ordered[-1] / 1e3
    summary["mean"] = sum(ordered) / len(ordered) / 1e3
    summary["samples"] = float(len(ordered))
    return summary


def exit_code(counts: dict[str, int]) -> int:
    """0 when nothing went wrong; data problems outrank connection problems."""
    if any(kind in DATA_KINDS for kind in counts):
        return EXIT_VERIFY
    return EXIT_CONNECTIONS if counts else 0


@dataclass(frozen=True)
class Report:
    """The result of one run. ``to_json`` documents the fields (README, Benchmarks)."""

    mode: str
    target: str
    connections: int
    message_size: int
    bytes_per_connection: int
    duration: float
    elapsed: float
    tally: Tally

    @property
    def rate(self) -> float:
        """Verified operations per second of wall time."""
        return self.tally.ops / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        """Verified echo in 10^6 bytes per second."""
        return self.tally.verified_bytes / self.elapsed / 1e6 if self.elapsed > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return exit_code(self.tally.counts)

    def latency(self) -> dict[str, float] | None:
        return latency_summary(self.tally.latencies)

    def to_json(self) -> dict[str, Any]:
        hold = self.mode == "hold"
        return {
            "mode": self.mode,
            "target": self.target,
            "connections": self.connections,
            "message_size": self.message_size,
            "bytes_per_connection": self.bytes_per_connection if self.mode == "bulk" else None,
            "duration": self.duration,
            "elapsed": round(self.elapsed, 6),
            "unit": UNITS[self.mode],
            "operations": self.tally.ops,
            "rate": round(self.rate, 3),
            "verified_bytes": self.tally.verified_bytes,
            "mb_per_s": round(self.mb_per_s, 3),
            "latency_us": self.latency(),
            "established": self.tally.established if hold else None,
            "verified_start": self.tally.verified_start if hold else None,
            "verified_end": self.tally.ops if hold else None,
            "errors": dict(sorted(self.tally.counts.items())),
            "error_count": self.tally.error_count,
            "problems": [problem.describe() for problem in self.tally.problems],
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
        }
