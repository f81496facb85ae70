"""Where the time of a fork goes, in a parent the size of forkserve's.

Times, in one loop of 1,500 forks: fork(2) as the parent sees it; the child's first
touch of parent objects (2,500 small objects: each write copies a page); and the
child's exit plus the parent's reap. Run with ``bare`` (a parent with only the
standard library loaded) or ``forkserve`` (the CLI and both process models loaded).

Usage: ``python benchmarks/fork_phases.py bare|forkserve``
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from pathlib import Path

N = 1500


def main(kind: str) -> None:
    if kind == "forkserve":
        from forkserve.cli import main
        from forkserve.parent import forkmodel  # noqa: F401
        from forkserve.prefork import pool  # noqa: F401

        main.build_parser().parse_args(["serve", "0"])
    gc.freeze()
    forks, touches, exits = [], [], []
    read_end, write_end = os.pipe()
    objects = [bytearray(100) for _ in range(20000)]
    for _ in range(N):
        began = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:
            started = time.perf_counter_ns()
            for obj in objects[::8]:
                obj[0] = 1
            touched = time.perf_counter_ns()
            os.write(write_end, f"{started} {touched}".encode().ljust(48))
            os._exit(0)
        forked = time.perf_counter_ns()
        started, touched = map(int, os.read(read_end, 48).split())
        reported = time.perf_counter_ns()
        os.waitpid(pid, 0)
        reaped = time.perf_counter_ns()
        forks.append((forked - began) / 1e3)
        touches.append((touched - started) / 1e3)
        exits.append((reaped - reported) / 1e3)
    status = Path("/proc/self/status").read_text().splitlines()
    rss = next(line.split()[1] for line in status if line.startswith("VmRSS"))
    median = statistics.median
    print(
        f"{kind:9s} rss={rss}kB fork={median(forks):.0f}us "
        f"first-touch(2500 objects)={median(touches):.0f}us exit+reap={median(exits):.0f}us"
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bare")
