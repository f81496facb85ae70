"""A forkserve.Server with test handlers, chosen by name on the command line."""

from __future__ import annotations

import functools
import http.server
import os
import socket
import sys
from typing import Any

import forkserve


def raises(conn: socket.socket, peer: Any) -> None:
    conn.sendall(b"about to fail\n")
    raise ValueError("handler bug")


def exits_7(conn: socket.socket, peer: Any) -> None:
    sys.exit(7)


def peer_and_pid(conn: socket.socket, peer: Any) -> None:
    conn.sendall(f"{peer[0]} {peer[1]} {os.getpid()} {os.getpgrp()}\n".encode())


def peer_echo(conn: socket.socket, peer: Any) -> None:
    """The peer's address, a space, then an echo of everything received."""
    conn.sendall(f"{peer[0]}:{peer[1]} ".encode())
    forkserve.echo(conn, peer)


HANDLERS: dict[str, forkserve.Handler] = {
    "raises": raises,
    "exits_7": exits_7,
    "peer_and_pid": peer_and_pid,
}

if __name__ == "__main__":
    service: forkserve.Handler | forkserve.Program
    banner = b""
    if sys.argv[1] == "program":  # exec mode through the API, with a banner
        service, banner = forkserve.Program(["cat"]), b"banner\n"
    elif sys.argv[1] == "http_site":  # a partial of a socketserver handler class
        site = os.environ["SITE"]
        service = functools.partial(http.server.SimpleHTTPRequestHandler, directory=site)
    else:
        service = HANDLERS[sys.argv[1]]
    with forkserve.Server(sys.argv[2], service, banner=banner) as server:
        server.serve_forever(ready=lambda s: print(s.port, flush=True))
