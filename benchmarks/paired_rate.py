"""This tree against another forkserve source tree, same arguments, same interpreter:
the connection rate (``forkserve bench -m rate -c 8 -s 16``) and the supervisor's
own CPU per connection (/proc/PID/stat utime+stime), in rounds whose order
alternates (the second server of a pair is disadvantaged by TIME_WAIT).

Usage: ``python benchmarks/paired_rate.py --before OTHER/src [--rounds N]
[--duration S] [--client 'BENCH-ARGS'] -- SERVE-ARGS...`` (e.g. ``-- --allow
127.0.0.0/8 --per-ip 1000 --handler echo``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

HOST = "127.0.0.1"
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    """User plus system seconds of ``pid`` itself (proc(5) stat fields 14, 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run_one(
    env: dict[str, str], serve: list[str], client: list[str], duration: float
) -> tuple[float, float, int]:
    """``(connections/s, supervisor us per connection, errors)`` of one run."""
    argv = [sys.executable, "-m", "forkserve", "serve", f"{HOST}:0", "--print-port", "-q"]
    proc = subprocess.Popen(
        [*argv, *serve], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        before = cpu(proc.pid)
        workload = ["-m", "rate", "-c", "8", "-s", "16", "-d", str(duration), "--json", *client]
        bench = subprocess.run(
            [sys.executable, "-m", "forkserve", "bench", *workload, HOST, str(port)],
            capture_output=True,
            check=True,
            timeout=duration + 60,
        )
        used = cpu(proc.pid) - before
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    result = json.loads(bench.stdout)
    return result["rate"], used / max(result["operations"], 1) * 1e6, result["error_count"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="another forkserve source tree (src/)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--client", default="", help="more bench arguments: '--proxy v1'")
    parser.add_argument("serve", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    serve = [a for a in args.serve if a != "--"] if args.serve[:1] == ["--"] else args.serve
    here = str(Path(__file__).resolve().parent.parent / "src")
    rows = {
        "this tree": {**os.environ, "PYTHONPATH": here},
        "--before": {**os.environ, "PYTHONPATH": str(Path(args.before).resolve())},
    }
    print(f"serve {' '.join(serve)}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    names = list(rows)
    for number in range(args.rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            rate, parent_us, errors = run_one(rows[name], serve, args.client.split(), args.duration)
            print(
                f"round {number + 1} {name:10} {rate:7,.0f} conn/s  supervisor "
                f"{parent_us:5.0f} us/conn  errors {errors}",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
