"""The standard library's peer: ``socketserver.ForkingTCPServer`` echo with 64 KiB reads.

Everything else is the stdlib default, as a Python developer would write it: at most
40 children (``max_children``), a listen backlog of 5 (``request_queue_size``), and
reaping by polling between requests. It prints the bound port on one line of stdout
once listening, like ``forkserve serve --print-port``.

Usage: ``python benchmarks/echo_stdlib.py [PORT]`` (default 0: a free port), on 127.0.0.1.
"""

from __future__ import annotations

import socketserver
import sys

READ_SIZE = 64 * 1024


class Echo(socketserver.BaseRequestHandler):
    """Send back every byte until the client half-closes."""

    def handle(self) -> None:
        while data := self.request.recv(READ_SIZE):
            self.request.sendall(data)


class Server(socketserver.ForkingTCPServer):
    allow_reuse_address = True


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    with Server(("127.0.0.1", port), Echo) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
