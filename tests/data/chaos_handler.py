"""A handler for the chaos scenarios: the first byte of a connection says what to do.

E  echo the rest of the connection (what normal clients send)
R  raise an exception (the handler's bug: logged, exit 1)
S  die by SIGSEGV
M  run out of memory under a small RLIMIT_AS (MemoryError: logged, exit 1)
H  hold: echo, like E (chaos kills these with SIGKILL from outside)
"""

from __future__ import annotations

import os
import resource
import signal
import socket
from typing import Any

from forkserve import echo


def handle(conn: socket.socket, peer: Any) -> None:
    command = conn.recv(1)
    if command in (b"E", b"H"):
        echo(conn, peer)
    elif command == b"R":
        raise RuntimeError("chaos: a handler bug")
    elif command == b"S":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif command == b"M":
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + (64 << 20), resource.RLIM_INFINITY))
        hog = bytearray(1 << 30)  # MemoryError: more than the limit allows
        conn.sendall(hog[:1])
