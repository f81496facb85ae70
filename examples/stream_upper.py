"""A socketserver handler class, unchanged, served by forkserve.

The handler is the one the socketserver documentation starts with; only the last lines
differ from a ``socketserver.ForkingTCPServer`` program (README, "Coming from
socketserver"). Run it, then talk to it:

    python examples/stream_upper.py 127.0.0.1:9003
    printf 'hello\\nworld\\n' | forkserve client 127.0.0.1 9003

or serve the class by name: ``forkserve serve 9003 --handler examples.stream_upper:Upper``.
"""

from __future__ import annotations

import socketserver
import sys

import forkserve


class Upper(socketserver.StreamRequestHandler):
    """Runs in a process of its own for each client, as under ForkingTCPServer."""

    timeout = 60  # seconds a client may stay silent (socketserver's own attribute)

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


if __name__ == "__main__":
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9003"
    with forkserve.Server(address, Upper, max_conns=100) as server:
        server.serve_forever(ready=lambda s: print(s.port, flush=True))
