"""A socketserver StreamRequestHandler subclass, loaded by path (--handler FILE.py:Upper).

Each line back in capitals; the first line answered is what the handler sees of its
connection and its server, so a test can compare it with what socketserver gives.
"""

from __future__ import annotations

import socket
import socketserver


class Upper(socketserver.StreamRequestHandler):
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.steps = ["setup"]

    def handle(self) -> None:
        self.steps.append("handle")
        nodelay = self.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        address = self.server.server_address
        assert isinstance(address, tuple)  # for mypy: socketserver types it loosely
        host, port = address[:2]
        info = [
            f"peer={self.client_address[0]}:{self.client_address[1]}",
            f"server={host}:{port}",
            f"server_port={self.server.server_port}",  # type: ignore[attr-defined]
            f"nodelay={int(bool(nodelay))}",
            f"timeout={self.request.gettimeout()}",
            f"class={self.server.RequestHandlerClass.__name__}",
            f"steps={','.join(self.steps)}",
        ]
        self.wfile.write(" ".join(info).encode() + b"\n")
        for line in self.rfile:
            self.wfile.write(line.upper())

    def finish(self) -> None:
        self.wfile.write(b"finish\n")
        super().finish()


class Slow(socketserver.StreamRequestHandler):
    """socketserver's class timeout: a client silent for longer ends the connection."""

    timeout = 0.3

    def handle(self) -> None:
        self.rfile.readline()


class Raises(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"about to fail\n")
        raise ValueError("handler class bug")


class NotAHandler:
    """A class with no (conn, peer) constructor and no socketserver ancestry."""
