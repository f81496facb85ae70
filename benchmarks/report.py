"""Write docs/benchmarks.md and its plots from ``benchmarks/run.py``'s outcomes."""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from forkserve.cli.bench.stats import Report, percentile

if TYPE_CHECKING:
    from run import Outcome

THROUGHPUT = {"rate": "connections/s", "pingpong": "messages/s", "bulk": "MB/s"}
COLORS = {"forkserve": "#1f77b4", "peer": "#7f7f7f", "reference": "#ff7f0e", "ceiling": "#2ca02c"}
# The comparisons the targets name (issue 14): each forkserve row against its yardstick.
PAIRS = (("forkserve fork", "Python floor"), ("forkserve exec cat", "tcpserver cat"))


def throughput(report: Report) -> float:
    return report.mb_per_s if report.mode == "bulk" else report.rate


def headline(report: Report, outcome: Outcome) -> str:
    """One line per workload while the suite runs."""
    problems = f", {report.tally.error_count} problems" if report.tally.error_count else ""
    if report.mode == "hold":
        memory = outcome.kib_per_conn
        kib = f", {memory:,.0f} KiB/conn" if memory is not None else ""
        tally = report.tally
        return f"{tally.ops}/{report.connections} verified at the end{kib}{problems}"
    latency = report.latency()
    p99 = f", p99 {latency['p99']:,.0f} us" if latency else ""
    return f"{throughput(report):,.0f} {THROUGHPUT[report.mode]}{p99}{problems}"


def ratio(value: float | None, best: float | None) -> str:
    if value is None or not best:
        return "-"
    return f"{value / best:.2f}x"


def best_peer(
    outcomes: list[Outcome], value: Callable[[Outcome], float | None], *, lowest: bool = False
) -> float | None:
    """The best value among the peers (not forkserve, not the ceiling)."""
    values = [v for o in outcomes if o.server.kind == "peer" if (v := value(o)) is not None]
    if not values:
        return None
    return min(values) if lowest else max(values)


def _latency(outcome: Outcome, workload: str, key: str) -> float | None:
    report = outcome.reports.get(workload)
    latency = report.latency() if report else None
    return latency[key] if latency else None


def _throughput(outcome: Outcome, workload: str) -> float | None:
    report = outcome.reports.get(workload)
    return throughput(report) if report else None


def results_table(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "| workload | server | throughput | vs best peer | p50 µs | p90 µs | p99 µs | "
        "p99.9 µs | max µs | p99 vs best peer | problems |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for workload, unit in THROUGHPUT.items():
        best = best_peer(outcomes, functools.partial(_throughput, workload=workload))
        p99 = functools.partial(_latency, workload=workload, key="p99")
        best_p99 = best_peer(outcomes, p99, lowest=True)
        for outcome in outcomes:
            report = outcome.reports.get(workload)
            if report is None:
                lines.append(f"| {workload} | {outcome.server.name} | failed | | | | | | | | |")
                continue
            latency = report.latency()
            cells = ["-"] * 5
            if latency:
                cells = [f"{latency[k]:,.0f}" for k in ("p50", "p90", "p99", "p99.9", "max")]
            ours = latency["p99"] if latency else None
            lines.append(
                f"| {workload} | {outcome.server.name} | {throughput(report):,.0f} {unit} "
                f"| {ratio(throughput(report), best)} | {' | '.join(cells)} "
                f"| {ratio(ours, best_p99)} | {report.tally.error_count} |"
            )
    return lines


def pairs_table(outcomes: list[Outcome]) -> list[str]:
    """Each forkserve row against its own yardstick (PAIRS), from this run."""
    by_name = {o.server.name: o for o in outcomes}
    lines = [
        "| ours | against | "
        + " | ".join(f"{w} (p99)" for w in THROUGHPUT)
        + " | hold: PSS per connection |",
        "|---|---|" + "--:|" * (len(THROUGHPUT) + 1),
    ]
    for ours, theirs in PAIRS:
        if ours not in by_name or theirs not in by_name:
            continue
        cells = []
        for workload in THROUGHPUT:
            mine, other = by_name[ours], by_name[theirs]
            value = ratio(_throughput(mine, workload), _throughput(other, workload))
            p99 = ratio(_latency(mine, workload, "p99"), _latency(other, workload, "p99"))
            cells.append(value if p99 == "-" else f"{value} ({p99})")
        cells.append(ratio(by_name[ours].kib_per_conn, by_name[theirs].kib_per_conn))
        lines.append(f"| {ours} | {theirs} | {' | '.join(cells)} |")
    return lines if len(lines) > 2 else ["(neither pair was run)"]


def hold_table(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "| server | connections | established | verified at start | verified at end "
        "| vs best peer | PSS per held connection | vs best peer | problems |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    best = best_peer(
        outcomes, lambda o: o.reports["hold"].tally.ops if "hold" in o.reports else None
    )
    best_kib = best_peer(outcomes, lambda o: o.kib_per_conn, lowest=True)
    for outcome in outcomes:
        report = outcome.reports.get("hold")
        if report is None:
            lines.append(f"| {outcome.server.name} | failed | | | | | | | |")
            continue
        tally = report.tally
        kib = outcome.kib_per_conn
        lines.append(
            f"| {outcome.server.name} | {report.connections} | {tally.established} "
            f"| {tally.verified_start} | {tally.ops} | {ratio(tally.ops, best)} "
            f"| {_kib(kib)} | {ratio(kib, best_kib)} "
            f"| {tally.error_count} |"
        )
    return lines


def _kib(kib: float | None) -> str:
    if kib is None:
        return "-"
    return f"{kib:,.0f} KiB" if abs(kib) >= 10 else f"{kib:.1f} KiB"


def ceiling(outcomes: list[Outcome]) -> list[str]:
    """What the client can do: at least the best any server reached."""
    lines = []
    for workload, unit in THROUGHPUT.items():
        rows = [(v, o.server.name) for o in outcomes if (v := _throughput(o, workload))]
        if not rows:
            continue
        best, name = max(rows)
        near = [
            o.server.name
            for o in outcomes
            if o.server.kind == "forkserve" and (v := _throughput(o, workload)) and v >= 0.9 * best
        ]
        note = f"; within 10% of it, so possibly client-limited: {', '.join(near)}" if near else ""
        lines.append(f"- {workload}: at least {best:,.0f} {unit} (reached with {name}){note}")
    return lines


def problems(outcomes: list[Outcome]) -> list[str]:
    lines = []
    for outcome in outcomes:
        if outcome.failure:
            lines.append(f"- **{outcome.server.name}**: the suite failed: {outcome.failure}")
        for workload, report in outcome.reports.items():
            counts = report.tally.counts
            if not counts:
                continue
            summary = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
            lines.append(f"- **{outcome.server.name}**, {workload}: {summary}; first:")
            lines += [f"  - `{p.describe()}`" for p in report.tally.problems[:3]]
    return lines or ["None: every byte of every workload was verified on every server."]


def models_table(models: dict[str, dict[str, float]]) -> list[str]:
    labels = list(next(iter(models.values())))
    lines = [
        "| client model | " + " | ".join(f"{w} /s" for w in models) + " |",
        "|---|" + "--:|" * len(models),
    ]
    for label in labels:
        cells = " | ".join(f"{models[w][label]:,.0f}" for w in models)
        lines.append(f"| {label} | {cells} |")
    return lines


def model_verdict(models: dict[str, dict[str, float]]) -> list[str]:
    """Where the blocking model stands against the best model, per workload."""
    lines = []
    for workload, rates in models.items():
        best_label = max(rates, key=lambda label: rates[label])
        blocking = next(label for label in rates if label.startswith("blocking"))
        share = rates[blocking] / rates[best_label] if rates[best_label] else 0.0
        lines.append(
            f"- {workload}: blocking processes reach {share:.0%} of the best model "
            f"in this run ({best_label})."
        )
    return lines


def plot_throughput(out: Path, outcomes: list[Outcome]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(w, f"{w}: {u} (higher is better)") for w, u in THROUGHPUT.items()]
    panels.append(("hold", "hold: KiB PSS per held connection (lower is better)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5))
    names = [o.server.name for o in outcomes]
    for ax, (workload, title) in zip(axes, panels, strict=True):
        if workload == "hold":
            values = [o.kib_per_conn or 0.0 for o in outcomes]
        else:
            values = [_throughput(o, workload) or 0.0 for o in outcomes]
        ax.bar(range(len(names)), values, color=[COLORS[o.server.kind] for o in outcomes])
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "benchmarks-throughput.png", dpi=100)
    plt.close(fig)


def plot_latency(out: Path, outcomes: list[Outcome]) -> None:
    """Latency by percentile, HdrHistogram style: the tail spread out to the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ticks = [50.0, 90.0, 99.0, 99.9, 99.99]
    for ax, workload in zip(axes, ("pingpong", "rate"), strict=True):
        for outcome in outcomes:
            report = outcome.reports.get(workload)
            if report is None or not report.tally.latencies:
                continue
            ordered = sorted(report.tally.latencies)
            qs = [100 * (1 - 10 ** (-k / 50)) for k in range(0, 5 * 50 + 1)]
            xs = [-math.log10(1 - q / 100) if q < 100 else 5.0 for q in qs]
            ys = [percentile(ordered, max(q, 1e-9)) / 1e3 for q in qs]
            style = "-" if outcome.server.kind == "forkserve" else "--"
            ax.plot(xs, ys, style, label=outcome.server.name, linewidth=1.5)
        ax.set_xticks([-math.log10(1 - t / 100) for t in ticks], [f"p{t:g}" for t in ticks])
        ax.set_yscale("log")
        ax.set_ylabel("µs")
        what = "round trip" if workload == "pingpong" else "connect to whole echo"
        ax.set_title(f"{workload}: {what} latency by percentile (lower is better)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "benchmarks-latency.png", dpi=100)
    plt.close(fig)


def write(
    out: Path,
    outcomes: list[Outcome],
    models: dict[str, dict[str, float]],
    *,
    machine: dict[str, str],
    command: str,
    seconds: float,
) -> None:
    plot_throughput(out, outcomes)
    plot_latency(out, outcomes)
    first = next(iter(o.reports for o in outcomes if o.reports), {})
    sample = {w: r for w, r in first.items()}
    settings = ", ".join(
        f"{w} -c {r.connections}"
        + (f" -s {r.message_size}" if w != "bulk" else f" -n {r.bytes_per_connection}")
        + (f" -d {r.duration:g}" if w != "bulk" else "")
        for w, r in sample.items()
    )
    text = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`benchmarks/run.py`); do not edit by hand, run it again.",
        f"Last run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s in all.",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine.items()],
        "",
        "## How",
        "",
        f"- Command: `{command}`",
        f"- Workloads (`forkserve bench` settings): {settings}; every echoed byte verified.",
        "- Every server listens on 127.0.0.1 and runs alone, one after another; the client",
        "  shares the machine's cores with it. Latency is measured by the client.",
        "- Servers: " + "; ".join(f"{o.server.name}: `{_argv(o)}`" for o in outcomes) + ".",
        "- What each row is for:",
        *[f"  - {o.server.name}: {o.server.purpose}." for o in outcomes if o.server.purpose],
        "- Ratios are against the best of the three peers (stdlib, socat, tcpserver) for that",
        "  measure; above 1.00x is better for throughput, below 1.00x better for latency and",
        "  memory. The uvloop echo row is the client's own ceiling, not a peer: a server",
        "  measured near it is limited by the client, not by itself. The Python floor is",
        "  a reference, not a peer: it does nothing a server needs beyond echoing.",
        "- Memory: PSS summed over the server's whole process tree (smaps_rollup, children",
        "  found through their parent pid), while hold holds its connections, minus the idle",
        "  tree just before hold, divided by the connections verified at the start.",
        "",
        "## Results",
        "",
        *results_table(outcomes),
        "",
        "### Against their yardsticks",
        "",
        "Throughput ratios in this run (p99 latency and memory ratios: below 1.00x is",
        "better): fork mode against the Python floor, exec mode against tcpserver+cat.",
        "",
        *pairs_table(outcomes),
        "",
        "### Client ceiling",
        "",
        "The client is not a bottleneck only if the servers stay below what it can do. It",
        "can do at least the best any server reached in this run:",
        "",
        *ceiling(outcomes),
        "",
        "### hold",
        "",
        *hold_table(outcomes),
        "",
        "![throughput](benchmarks-throughput.png)",
        "",
        "![latency](benchmarks-latency.png)",
        "",
        "## Problems",
        "",
        *problems(outcomes),
        "",
        "## Client models",
        "",
        "The same pingpong (8 connections, 64 bytes) and rate (8 workers, 16 bytes) loops",
        "without verification, written three ways (`benchmarks/client_models.py`);",
        "pingpong against tcpserver+cat and rate against the uvloop echo server, the",
        "fastest servers for each here, so that the server limits the client least.",
        "`forkserve bench` uses one blocking-socket process per connection or worker:",
        "",
        *(models_table(models) if models else ["(not run)"]),
        "",
        *model_verdict(models),
        "",
    ]
    (out / "benchmarks.md").write_text("\n".join(text))


def _argv(outcome: Outcome) -> str:
    """The server's command line, without this machine's paths."""
    root = str(Path(__file__).resolve().parent.parent) + "/"
    argv = ["python" if a == sys.executable else a.replace(root, "") for a in outcome.server.argv]
    return " ".join(argv)
