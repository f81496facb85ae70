"""The handler API, and the built-in echo handler.

A handler is any callable ``handler(conn, peer)``: ``conn`` is the connected,
blocking ``socket.socket``; ``peer`` is the client's address as ``getpeername()``
returns it (``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6).
It runs in a process of its own: in fork mode a fresh child per connection, in prefork
mode a reusable worker. Whatever it does cannot touch other connections.

When it returns the connection is closed and the child exits 0. If it raises, the
traceback goes to the log and the child exits 1. A peer that resets the connection
or goes away mid-write (ConnectionResetError, BrokenPipeError) ends it quietly with
exit 0: that is the client's choice, not a server fault. ``SystemExit(n)`` exits n.
"""

from __future__ import annotations

import socket
import sys
import traceback
from typing import Any, Protocol

# Echo buffer: large enough that a bulk transfer moves in few system calls.
ECHO_BUFFER = 256 * 1024

# Child exit codes (documented in the README).
EXIT_HANDLER_OK = 0
EXIT_HANDLER_RAISED = 1


class Handler(Protocol):
    """What forkserve calls for each connection."""

    def __call__(self, conn: socket.socket, peer: Any, /) -> object: ...


def echo(conn: socket.socket, peer: Any) -> None:
    """RFC 862 echo: send back every byte received, until the client closes.

    Binary-safe; ``sendall`` completes partial writes. Half-close works: when the
    client shuts down its write side, ``recv`` returns 0 only after every earlier
    byte was read, and each was already sent back, so nothing is lost.
    """
    buf = bytearray(ECHO_BUFFER)
    view = memoryview(buf)
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            return
        conn.sendall(view[:n])


def run_handler(handler: Handler, conn: socket.socket, peer: Any) -> int:
    """Run ``handler`` for one connection and return the exit code for its process.

    Resource handling: closes ``conn`` whatever happens.
    """
    try:
        handler(conn, peer)
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return EXIT_HANDLER_OK
    except SystemExit as exc:
        if exc.code is None:
            return EXIT_HANDLER_OK
        return exc.code if isinstance(exc.code, int) else EXIT_HANDLER_RAISED
    except BaseException:  # noqa: BLE001 - a handler bug must not escape the child
        _report_exception()
        return EXIT_HANDLER_RAISED
    finally:
        conn.close()
    return EXIT_HANDLER_OK


def _report_exception() -> None:
    """Write the handler's traceback to the log, prefixed so it greps with the pid."""
    try:
        text = traceback.format_exc()
        sys.stderr.write(text)
        sys.stderr.flush()
    except Exception:  # noqa: BLE001, S110 - stderr gone: nothing else to tell
        pass
