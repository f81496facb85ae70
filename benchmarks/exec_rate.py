"""Exec mode's connection rate beside tcpserver's, with where the CPU goes.

Runs ``forkserve bench -m rate -c 8 -s 16`` against ``forkserve serve -q -- cat`` and
``tcpserver ... cat`` (as benchmarks/run.py starts it), in rounds whose order
rotates (the second server of a pair is disadvantaged by TIME_WAIT), and reads each
server's CPU from /proc/PID/stat around the run: its own user and system time, and
its reaped children's (the programs), per connection, and its minor page faults.

``--before SRC`` adds a row for another forkserve source tree (``src`` of a checkout
of main, say) run on the same interpreter, for a before/after comparison in one run.
``--fork`` adds this tree's fork path (``start=fork``), forced by a resource limit
(``--limit-nofile``: a step the child runs before exec, invisible to the client).

Usage: ``python benchmarks/exec_rate.py [--rounds N] [--duration S] [--before SRC] [--fork]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

HOST = "127.0.0.1"
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> tuple[float, float, float, float, int]:
    """``(utime, stime, cutime, cstime)`` in seconds, and minor faults, of ``pid``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # Fields after the command, counted from state (3): minflt 10, utime 14, stime 15,
    # cutime 16, cstime 17 (proc(5)); here index = number - 3.
    times = [int(fields[n - 3]) / TICK for n in (14, 15, 16, 17)]
    return times[0], times[1], times[2], times[3], int(fields[10 - 3])


def start(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, process_group=0
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError(f"{argv[:4]}: no port printed ({line!r})")
    return proc, int(line)


def run_one(name: str, argv: list[str], env: dict[str, str], duration: float) -> dict[str, float]:
    proc, port = start(argv, env)
    try:
        before = cpu(proc.pid)
        workload = ["-m", "rate", "-c", "8", "-s", "16", "-d", str(duration), "--json"]
        bench = subprocess.run(
            [sys.executable, "-m", "forkserve", "bench", *workload, HOST, str(port)],
            capture_output=True,
            check=True,
            timeout=duration + 60,
        )
        after = cpu(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    result = json.loads(bench.stdout)
    ops = max(result["operations"], 1)
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return {
        "rate": result["rate"],
        "errors": result["error_count"],
        "parent_user_us": delta[0] / ops * 1e6,
        "parent_sys_us": delta[1] / ops * 1e6,
        "children_us": (delta[2] + delta[3]) / ops * 1e6,
        "minflt": delta[4] / ops,
    }


def lineup(args: argparse.Namespace) -> list[tuple[str, list[str], dict[str, str]]]:
    python = sys.executable
    serve = [python, "-m", "forkserve", "serve", f"{HOST}:0", "--print-port", "-q"]
    env = dict(os.environ)
    rows = [("forkserve exec (this tree)", [*serve, "--", "cat"], env)]
    if args.fork:
        # A resource limit is a step the child must run before exec: the fork path.
        limit = str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        rows.append(("forkserve exec, forked", [*serve, "--limit-nofile", limit, "--", "cat"], env))
    if args.before:
        before_env = {**env, "PYTHONPATH": str(Path(args.before).resolve())}
        rows.append(("forkserve exec (--before)", [*serve, "--", "cat"], before_env))
    tcpserver = ["tcpserver", "-1", "-HR", "-l0", "-c", "100000", HOST, "0", "cat"]
    rows.append(("tcpserver cat", tcpserver, env))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--before", help="another forkserve source tree (its src/)")
    parser.add_argument("--fork", action="store_true", help="add this tree's fork path")
    args = parser.parse_args()
    rows = lineup(args)
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in rows}
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    for round_number in range(args.rounds):
        shift = round_number % len(rows)
        for name, argv, env in rows[shift:] + rows[:shift]:
            measured = run_one(name, argv, env, args.duration)
            results[name].append(measured)
            print(
                f"round {round_number + 1} {name:28} {measured['rate']:8,.0f}/s  parent "
                f"{measured['parent_user_us']:4.0f}+{measured['parent_sys_us']:4.0f} us  "
                f"children {measured['children_us']:5.0f} us  minflt "
                f"{measured['minflt']:5.1f}  errors {measured['errors']:.0f}",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("\n| server | conn/s (each round) | parent CPU/conn (user+sys) | children CPU/conn |")
    print("|---|--:|--:|--:|")
    for name, runs in results.items():
        rates = " / ".join(f"{r['rate']:,.0f}" for r in runs)
        user = sum(r["parent_user_us"] for r in runs) / len(runs)
        system = sum(r["parent_sys_us"] for r in runs) / len(runs)
        children = sum(r["children_us"] for r in runs) / len(runs)
        print(f"| {name} | {rates} | {user:.0f}+{system:.0f} us | {children:.0f} us |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
