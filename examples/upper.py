"""A forkserve handler in a few lines: upper-case every line a client sends.

Run it, then talk to it:

    python examples/upper.py 127.0.0.1:9001
    printf 'hello\\nworld\\n' | forkserve client 127.0.0.1 9001
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import forkserve


def upper(conn: socket.socket, peer: Any) -> None:
    """Runs in a process of its own for each client; returning closes the connection."""
    with conn.makefile("rb") as lines:
        for line in lines:
            conn.sendall(line.upper())


if __name__ == "__main__":
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9001"
    with forkserve.Server(address, upper, max_conns=100) as server:
        # Print the bound port once ready (useful with port 0), then serve until SIGTERM.
        server.serve_forever(ready=lambda s: print(s.port, flush=True))
