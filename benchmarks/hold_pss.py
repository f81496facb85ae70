"""PSS per held connection of a server's whole process tree.

Starts the server command (which must print its port on the first line of stdout, as
``forkserve serve ... --print-port`` does), measures the tree's PSS idle, opens N
connections, echoes one byte on each, measures again, and prints the difference per
connection. Children are found through their parent pid (forkserve's children lead
process groups of their own).

Usage: ``python benchmarks/hold_pss.py N COMMAND...``, e.g.
``python benchmarks/hold_pss.py 300 forkserve serve 127.0.0.1:0 --print-port -q``.
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from pathlib import Path


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith("Pss:"))
    return total


def main(count: int, command: list[str]) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = subprocess.Popen(command, stdout=subprocess.PIPE, process_group=0)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    idle = pss_kib(tree(server.pid))
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"x")
        held.append(sock)
    for sock in held:
        assert sock.recv(1) == b"x"
    time.sleep(0.5)  # let the last children settle before reading smaps (a measurement)
    pids = tree(server.pid)
    total = pss_kib(pids)
    print(
        f"held={count} processes={len(pids)} idle={idle} KiB total={total} KiB "
        f"per_connection={(total - idle) / count:.0f} KiB"
    )
    for sock in held:
        sock.close()
    server.terminate()
    server.wait(30)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
