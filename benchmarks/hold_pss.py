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

sys.path.insert(0, str(Path(__file__).parent))
from run import process_tree, pss_kib  # make bench's own measurement


def main(count: int, command: list[str]) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = subprocess.Popen(command, stdout=subprocess.PIPE, process_group=0)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    idle = pss_kib(process_tree(server.pid))
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"x")
        held.append(sock)
    for sock in held:
        assert sock.recv(1) == b"x"
    time.sleep(0.5)  # let the last children settle before reading smaps (a measurement)
    pids = process_tree(server.pid)
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
