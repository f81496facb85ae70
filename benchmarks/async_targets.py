"""Issue 16's targets for async mode, in one run: hold, rate and pingpong.

Starts each server in turn (as benchmarks/run.py does, through its helpers), runs
``forkserve bench``'s workloads against it, and prints one row per server and
workload. Hold measures the server tree's PSS before and while its connections are
held, and reports KiB per connection. Pairs are run in alternating order (the second
server of a pair meets the first one's TIME_WAIT sockets).

Usage: ``python benchmarks/async_targets.py [--hold 20000] [--duration 5]
[--rounds 2]``. Hold needs about 20,100 descriptors in this process: the bench raises
its RLIMIT_NOFILE, hard limit included when it may (root, CAP_SYS_RESOURCE);
otherwise ``ulimit -Hn`` must allow it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import run  # noqa: E402 - make bench's own helpers

from forkserve.cli.bench.run import execute  # noqa: E402
from forkserve.cli.bench.stats import Tally  # noqa: E402


def server(name: str, *args: str) -> run.Server:
    argv = [sys.executable, "-m", "forkserve", "serve", f"{run.HOST}:0", "--print-port", "-q"]
    return run.Server(name, "forkserve", [*argv, *args], "stdout")


def lineup(hold: int) -> list[run.Server]:
    conns = str(hold + 64)
    return [
        server("prefork", "--mode", "prefork", "--max-workers", "64"),
        server("async uvloop", "--mode", "async", "--workers", "2", "--max-conns", conns),
        server("async asyncio", "--mode", "async", "--workers", "2", "--max-conns", conns),
    ]


def measure(srv: run.Server, workloads: tuple[str, ...], args: argparse.Namespace) -> None:
    if srv.name == "async asyncio":
        srv.argv += ["--loop", "asyncio"]
    with (
        tempfile.TemporaryDirectory(prefix="forkserve-async-") as logs,
        run.running(srv, Path(logs)) as proc,
    ):
        for workload in workloads:
            config = run.make_config(srv.port, workload, args)
            if workload != "hold":
                result = execute(config)
                line = report.headline(result, run.Outcome(srv))
                print(f"{srv.name:14} {workload:8} {line}", flush=True)
                continue
            before = run.pss_kib(run.settled_tree(proc))
            held: dict[str, int] = {}

            def on_held(_: Tally, held: dict[str, int] = held, pid: int = proc.pid) -> None:
                held["kib"] = run.pss_kib(run.process_tree(pid))
                held["procs"] = len(run.process_tree(pid))

            tally = execute(config, on_held=on_held).tally
            per = (held["kib"] - before) / max(tally.verified_start, 1)
            print(
                f"{srv.name:14} hold     verified start {tally.verified_start}, end "
                f"{tally.ops} of {config.conns}; PSS idle {before} KiB, held "
                f"{held['kib']} KiB in {held['procs']} processes: {per:.1f} KiB/conn; "
                f"problems {tally.error_count}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold", type=int, default=20000)
    parser.add_argument("--hold-seconds", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--bulk", type=int, default=1 << 26)
    parser.add_argument("--skip-hold", action="store_true")
    args = parser.parse_args()
    servers = lineup(args.hold)
    for round_ in range(args.rounds):
        order = servers if round_ % 2 == 0 else servers[::-1]
        for srv in order:
            measure(srv, ("rate", "pingpong"), args)
    if not args.skip_hold:
        for srv in servers[1:]:
            measure(srv, ("hold",), args)


if __name__ == "__main__":
    main()
