"""What prometheus_client would cost the supervisor (issue 14, item 5): measured
with the real CLI, the supervisor started as it is, and with prometheus_client
imported before it starts (what adopting its registry and exposition would load).

For each: the time from exec to ``--print-port``; the idle supervisor's (and the
forker's, and each prefork worker's) RSS and PSS after one scrape; the
connection rate (``forkserve bench -m rate``) with the supervisor's CPU per
connection, in rounds whose order alternates (TIME_WAIT disadvantages the second
of a pair). And in-process: one scrape's rendering by core.metrics and by
prometheus_client's ``generate_latest`` over a collector giving the same families.

Usage: ``python benchmarks/metrics_cost.py [--rounds N] [--duration S] [--mode fork|prefork|async]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.0.1"
TICK = os.sysconf("SC_CLK_TCK")
SCRAPES = 500  # CPU time is counted in ticks (10 ms): enough scrapes for a few dozen
PRELOAD = (
    "import prometheus_client, runpy, sys; sys.argv[0] = 'forkserve'; "
    "runpy.run_module('forkserve', run_name='__main__')"
)


def memory(pid: int) -> tuple[int, int]:
    """``(Rss, Pss)`` of ``pid`` in KiB (/proc/PID/smaps_rollup)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields["Rss"], fields["Pss"]


def cpu(pid: int) -> float:
    """User plus system seconds of ``pid`` itself (proc(5) stat fields 14, 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def start(preload: bool, mode: str) -> tuple[subprocess.Popen[bytes], int, int, float]:
    """A server with ``--metrics``: its process, port, metrics port and start time."""
    head = [sys.executable, "-c", PRELOAD] if preload else [sys.executable, "-m", "forkserve"]
    argv = [*head, "serve", f"{HOST}:0", "--print-port", "-q", "--metrics", f"{HOST}:0"]
    if mode != "fork":
        argv += ["--mode", mode, *(["--workers", "2"] if mode == "async" else [])]
    descriptor, name = tempfile.mkstemp(suffix=".log")
    os.close(descriptor)
    log = Path(name)
    begin = time.perf_counter()
    with log.open("wb") as sink:
        proc = subprocess.Popen([*argv, "--handler", "echo"], stdout=subprocess.PIPE, stderr=sink)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    started = time.perf_counter() - begin
    words = log.read_text().split("metrics address=")[1].split()[0]
    log.unlink()
    return proc, port, int(words.rpartition(":")[2]), started


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
        return body


def one(preload: bool, mode: str, duration: float) -> dict[str, float]:
    proc, port, metrics_port, started = start(preload, mode)
    try:
        scrape(metrics_port)
        rss, pss = memory(proc.pid)
        kids = children(proc.pid)
        kid_pss = [memory(kid)[1] for kid in kids]
        before = cpu(proc.pid)
        for _ in range(SCRAPES):
            scrape(metrics_port)
        scrape_us = (cpu(proc.pid) - before) / SCRAPES * 1e6
        before = cpu(proc.pid)
        workload = ["-m", "rate", "-c", "8", "-s", "16", "-d", str(duration), "--json"]
        bench = subprocess.run(
            [sys.executable, "-m", "forkserve", "bench", *workload, HOST, str(port)],
            capture_output=True,
            check=True,
            timeout=duration + 60,
        )
        result = json.loads(bench.stdout)
        per_conn = (cpu(proc.pid) - before) / max(result["operations"], 1) * 1e6
    finally:
        stop(proc)
    return {
        "start_ms": started * 1e3,
        "rss": rss,
        "pss": pss,
        "children_pss": sum(kid_pss) / max(len(kid_pss), 1),
        "scrape_us": scrape_us,
        "rate": result["rate"],
        "errors": result["error_count"],
        "parent_us": per_conn,
    }


def render_cost(repeat: int = 2000) -> None:
    """One scrape's rendering, in-process: core.metrics against prometheus_client."""
    from prometheus_client import generate_latest
    from prometheus_client.core import (
        CollectorRegistry,
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    from forkserve.core.metrics import DURATION_BUCKETS, FORK_BUCKETS, Family, Histogram, Metrics

    metrics = Metrics("fork")
    for i in range(1000):
        metrics.accepted()
        metrics.ended(i / 100)
        metrics.forked(i / 1e5)
        metrics.exited(0, None)
    gauges = {"active": 3, "limit": 100}

    class Collector:
        def collect(self) -> object:
            for family in (
                metrics.accepted_total,
                metrics.rejected_total,
                metrics.exited_total,
                metrics.duration,
                metrics.fork_time,
                metrics.active,
                metrics.limit,
                metrics.operations_total,
            ):
                yield convert(family)

    def convert(family: Family) -> object:
        if isinstance(family, Histogram):
            total, buckets = 0, []
            for bound, count in zip(family.bounds, family.counts, strict=True):
                total += count
                buckets.append((str(bound) if bound != float("inf") else "+Inf", total))
            return HistogramMetricFamily(
                family.name, family.help, buckets=buckets, sum_value=family.sum
            )
        kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
        labels = [family.label] if family.label else []
        out = kind(family.name, family.help, labels=labels)
        for key, value in family.values.items():
            out.add_metric([key] if family.label else [], value)
        return out

    from prometheus_client import Counter
    from prometheus_client import Histogram as PromHistogram

    counted = CollectorRegistry(auto_describe=False)
    accepted = Counter("forkserve_connections_accepted", "", registry=counted)
    exited = Counter("forkserve_children_exited", "", ["outcome"], registry=counted)
    duration = PromHistogram("d", "", buckets=DURATION_BUCKETS, registry=counted)
    fork_time = PromHistogram("f", "", buckets=FORK_BUCKETS, registry=counted)

    def ours() -> None:
        metrics.accepted()
        metrics.forked(0.0003)
        metrics.ended(0.02)
        metrics.exited(0, None)

    def theirs() -> None:
        accepted.inc()
        fork_time.observe(0.0003)
        duration.observe(0.02)
        exited.labels("ok").inc()

    for name, update in (("core.metrics", ours), ("prometheus_client Counter/Histogram", theirs)):
        begin = time.perf_counter()
        for _ in range(repeat * 10):
            update()
        elapsed = (time.perf_counter() - begin) / (repeat * 10) * 1e6
        print(f"  {name:36} {elapsed:7.2f} us of updates per connection")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())  # type: ignore[arg-type]
    renderers: tuple[tuple[str, Callable[[], bytes]], ...] = (
        ("core.metrics render", lambda: metrics.render(gauges)),
        ("prometheus_client generate_latest", lambda: generate_latest(registry)),
    )
    for name, function in renderers:
        function()
        begin = time.perf_counter()
        for _ in range(repeat):
            function()
        print(f"  {name:36} {(time.perf_counter() - begin) / repeat * 1e6:7.1f} us per scrape")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--mode", default="fork", choices=("fork", "prefork", "async"))
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    rows: dict[str, list[dict[str, float]]] = {"as is": [], "prometheus_client": []}
    for round_number in range(args.rounds):
        order = [False, True] if round_number % 2 == 0 else [True, False]
        for preload in order:
            name = "prometheus_client" if preload else "as is"
            measured = one(preload, args.mode, args.duration)
            rows[name].append(measured)
            print(
                f"round {round_number + 1} {args.mode} {name:18} start {measured['start_ms']:5.0f} "
                f"ms  supervisor RSS {measured['rss']:6,} PSS {measured['pss']:6,} KiB  "
                f"children PSS {measured['children_pss']:6,.0f} KiB  scrape "
                f"{measured['scrape_us']:5.0f} us  {measured['rate']:6,.0f} conn/s  "
                f"supervisor {measured['parent_us']:4.0f} us/conn  errors "
                f"{measured['errors']:.0f}",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("in-process: a connection's counting, and one scrape's rendering:")
    render_cost()
    return 0


if __name__ == "__main__":
    sys.exit(main())
