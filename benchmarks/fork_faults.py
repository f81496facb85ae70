"""Page faults and CPU per connection of the process that forks, and of its children.

Starts the server command (it must print its port on the first line of stdout, as
``forkserve serve ... --print-port`` does), finds the forking process (fork mode's
forker, a child of the server running ``forkserve.forker``; else the server itself),
warms up with 50 connections, then makes N connections one after another (16 bytes
echoed, then the client closes) and reads ``/proc/PID/stat`` before and after: the
forking process's own ``minflt`` and ``utime+stime``, and its reaped children's
``cminflt`` and ``cutime+cstime``. One connection at a time, so the counts do not
depend on the machine's load (the CPU times do, somewhat): each fault is a page the
process wrote after a fork (a copy-on-write), the cost docs/performance.md measures.

Usage: ``python benchmarks/fork_faults.py N COMMAND...``, e.g.
``python benchmarks/fork_faults.py 400 forkserve serve 127.0.0.1:0 --print-port -q``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

WARM_UP = 50
PAYLOAD = b"0123456789abcdef"


def counters(pid: int) -> tuple[int, int, int, int]:
    """``(minflt, cminflt, utime+stime, cutime+cstime)`` in faults and clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (
        int(fields[7]),
        int(fields[8]),
        int(fields[11]) + int(fields[12]),
        int(fields[13]) + int(fields[14]),
    )


def forking_process(server: int) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == server and b"forkserve.forker" in cmdline:
            return int(entry.name)
    return server


def one(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(PAYLOAD)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        assert received == PAYLOAD, received


def main(count: int, command: list[str]) -> None:
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, process_group=0
    )
    assert server.stdout is not None
    try:
        port = int(server.stdout.readline())
        for _ in range(WARM_UP):
            one(port)
        pid = forking_process(server.pid)
        time.sleep(0.3)  # the warm-up's last children reaped (a measurement, not a wait)
        before = counters(pid)
        for _ in range(count):
            one(port)
        time.sleep(0.3)
        after = counters(pid)
    finally:
        server.terminate()
        server.wait(30)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    own, children, own_cpu, children_cpu = (b - a for a, b in zip(before, after, strict=True))
    print(
        f"connections={count} forking process: {own / count:.0f} faults "
        f"{own_cpu * tick_us / count:.0f} us; children: {children / count:.0f} faults "
        f"{children_cpu * tick_us / count:.0f} us (per connection)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
