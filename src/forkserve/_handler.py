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

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing is what we avoid

if TYPE_CHECKING:
    from typing import Any, Protocol

    from forkserve._edge import Edge
else:  # typing costs the parent ~6 ms and memory every child maps: see _types
    Any = object
    Protocol = object

# Echo buffers: a child starts small, since most connections are short and a large
# buffer would be fresh pages to fault in and zero for every fork; a read that fills
# the buffer switches to the large one, so a bulk transfer moves in few system calls.
ECHO_FIRST_BUFFER = 16 * 1024
ECHO_BULK_BUFFER = 256 * 1024

# Child exit codes (documented in the README).
EXIT_HANDLER_OK = 0
EXIT_HANDLER_RAISED = 1


class Handler(Protocol):
    """What forkserve calls for each connection."""

    def __call__(self, conn: socket.socket, peer: Any, /) -> object: ...


class Connection:
    """What the parent knows about a connection when it forks the child for it.

    Attributes:
        peer: the client's address, as ``getpeername()`` returns it.
        connnum: connections open from the client's address, this one included
            (UCSPI's ``TCPCONNNUM``).
        env: extra environment variables for this connection's program or handler.
        local: the address the client connected to when it is not the socket's own
            (a PROXY header named it), else None: ``getsockname()`` tells.
    """

    __slots__ = ("connnum", "env", "local", "peer")

    def __init__(self, peer: Any, connnum: int = 1, env: dict[str, str] | None = None) -> None:
        self.peer = peer
        self.connnum = connnum
        self.env = env if env is not None else {}
        self.local: Any = None


class Service(Protocol):
    """What a child runs for a connection: returns the child's exit code.

    Python handlers are wrapped by ``PythonService``; exec mode has its own.
    """

    def __call__(self, conn: socket.socket, info: Connection, /) -> int: ...


class PythonService:
    """Runs a Python ``Handler`` in the child, with the connection's extra environment.

    Args:
        handler: the handler.
        banner: bytes written to the client before the handler starts (``--banner``).
        edge: the PROXY header and TLS handshake (``_edge.Edge``), run first; with
            TLS the handler gets the ``ssl.SSLSocket``.
    """

    __slots__ = ("banner", "edge", "handler")

    def __init__(self, handler: Handler, banner: bytes = b"", edge: Edge | None = None) -> None:
        self.handler = handler
        self.banner = banner
        self.edge = edge

    def __call__(self, conn: socket.socket, info: Connection) -> int:
        if self.edge is not None:
            served = self.edge(conn, info)
            if isinstance(served, int):
                return served
            conn = served
        if self.banner and not write_banner(conn, self.banner):
            conn.close()
            return EXIT_HANDLER_OK
        if info.env:
            import os

            os.environ.update(info.env)
        return run_handler(self.handler, conn, info.peer)


def write_banner(conn: socket.socket, banner: bytes) -> bool:
    """Send ``banner`` to the client, as tcpserver's ``-B`` does; False if it is gone.

    A client that resets the connection before the banner is out is not a server
    fault: the caller ends the child quietly (exit 0), as a handler would.
    """
    try:
        conn.sendall(banner)
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return False
    return True


def echo(conn: socket.socket, peer: Any) -> None:
    """RFC 862 echo: send back every byte received, until the client closes.

    Binary-safe; ``sendall`` completes partial writes. Half-close works: when the
    client shuts down its write side, ``recv`` returns 0 only after every earlier
    byte was read, and each was already sent back, so nothing is lost.
    """
    buf = bytearray(ECHO_FIRST_BUFFER)
    view = memoryview(buf)
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            return
        conn.sendall(view[:n])
        if n == len(buf) < ECHO_BULK_BUFFER:
            buf = bytearray(ECHO_BULK_BUFFER)
            view = memoryview(buf)


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
        import traceback

        text = traceback.format_exc()
        sys.stderr.write(text)
        sys.stderr.flush()
    except Exception:  # noqa: BLE001, S110 - stderr gone: nothing else to tell
        pass
