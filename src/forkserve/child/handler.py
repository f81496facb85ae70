"""The handler API, and the built-in echo handler.

A handler is any callable ``handler(conn, peer)``: ``conn`` is the connected,
blocking ``socket.socket``; ``peer`` is the client's address as ``getpeername()``
returns it (``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6).
On a Unix-domain socket (``unix:PATH``), which has no client address, ``peer`` is the
client's credentials from ``SO_PEERCRED``: ``(pid, uid, gid)``, three ints, the client
process's when it called connect(2).
It runs in a process of its own: in fork mode a fresh child per connection, in prefork
mode a reusable worker. Whatever it does cannot touch other connections. (A
``socketserver.BaseRequestHandler`` subclass becomes such a callable when it is loaded:
``child.requesthandler.RequestHandler``.)

When it returns the connection is closed and the child exits 0; input it left
unread is drained first, so that the close sends no reset that would cut its reply
short (a lingering close, bounded: see child.linger). If it raises, the
traceback goes to the log and the child exits 1. A peer that resets the connection
or goes away mid-write (ConnectionResetError, BrokenPipeError; over TLS also
SSLZeroReturnError and SSLEOFError) ends it quietly with exit 0: that is the client's
choice, not a server fault. A TimeoutError (the socket
timeout ``--idle-timeout`` sets, or the handler's own) ends it quietly with exit 124.
``SystemExit(n)`` exits n.
"""

from __future__ import annotations

import socket
import sys

from forkserve.child.connection import Connection
from forkserve.child.linger import finish_plain
from forkserve.child.prelude import EXIT_IDLE_TIMEOUT, Prelude

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing is what we avoid

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, Protocol

    from forkserve._log import Log
    from forkserve.child.edge import Edge
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


class Service(Protocol):
    """What a child runs for a connection: returns the child's exit code.

    Python handlers are wrapped by ``PythonService``; exec mode has its own.
    """

    def __call__(self, conn: socket.socket, info: Connection, /) -> int: ...


class PythonService:
    """Runs a Python ``Handler`` in the child, with the connection's extra environment.

    Args:
        handler: the handler.
        prelude: what runs first (banner, limits, timeouts); see ``Prelude``. Its
            log, with JSON logs, takes a handler's traceback as a ``handler-error``
            event (so every line stays one JSON object); otherwise, or without a
            log, it is written to standard error as Python prints it.
        edge: the PROXY header and TLS handshake (``child.edge.Edge``), run before the
            prelude; with TLS the handler gets the ``ssl.SSLSocket``.
    """

    __slots__ = ("edge", "handler", "prelude")

    def __init__(
        self, handler: Handler, prelude: Prelude | None = None, edge: Edge | None = None
    ) -> None:
        self.handler = handler
        self.prelude = prelude if prelude is not None else Prelude()
        self.edge = edge

    def __call__(self, conn: socket.socket, info: Connection) -> int:
        started = start_connection(conn, info, self.edge, self.prelude)
        if isinstance(started, int):
            return started
        saved = set_environment(info.env) if info.env else None
        finish: Callable[[Any], None] = finish_plain  # unread input: a FIN, then drained
        if self.edge is not None and self.edge.tls is not None:
            from forkserve.child.tls import finish_tls

            finish = finish_tls  # close_notify, a FIN, then the client's end
        code = run_handler(self.handler, started, info.peer, self.prelude.log, finish)
        if saved is not None:
            set_environment(saved)  # a prefork worker serves the next client next
        if code == EXIT_IDLE_TIMEOUT and self.prelude.idle_timeout:
            self.prelude.log_timeout(info, "idle", self.prelude.idle_timeout)
        return code


def start_connection(
    conn: socket.socket, info: Connection, edge: Edge | None, prelude: Prelude
) -> socket.socket | int:
    """What runs in the child before the handler or program, in order: the edge (the
    PROXY header, then the TLS handshake: see child.edge), then the prelude (limits,
    banner, first-byte wait, idle timeout).

    Returns:
        The socket to serve (the TLS socket with TLS), or the child's exit code when
        the connection ends here.
    """
    if edge is not None:
        served = edge(conn, info)
        if isinstance(served, int):
            return served
        conn = served
    code = prelude(conn, info)
    return conn if code is None else code


def set_environment(env: Mapping[str, str | None]) -> dict[str, str | None]:
    """Set (None: unset) environment variables; return what they were before."""
    import os

    saved = {name: os.environ.get(name) for name in env}
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return saved


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


def run_handler(
    handler: Handler,
    conn: socket.socket,
    peer: Any,
    log: Log | None = None,
    finish: Callable[[Any], None] | None = None,
) -> int:
    """Run ``handler`` for one connection and return the exit code for its process.

    Args:
        log: where a JSON-format traceback goes (see PythonService).
        finish: what ends the connection cleanly once the handler has returned
            (over TLS, close_notify: see ``child.tls.end_tls``); not run when it raised.

    Resource handling: closes ``conn`` whatever happens.
    """
    try:
        handler(conn, peer)
        if finish is not None:
            finish(conn)
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return EXIT_HANDLER_OK
    except TimeoutError:
        return EXIT_IDLE_TIMEOUT
    except SystemExit as exc:
        if exc.code is None:
            return EXIT_HANDLER_OK
        return exc.code if isinstance(exc.code, int) else EXIT_HANDLER_RAISED
    except BaseException as exc:  # noqa: BLE001 - a handler bug must not escape the child
        if not tls_peer_gone(exc):  # else the client went away: exit 0
            report_exception(log)
            return EXIT_HANDLER_RAISED
    finally:
        conn.close()
    return EXIT_HANDLER_OK


def tls_peer_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is how a TLS client's going away shows: a write after its
    close_notify (SSLZeroReturnError), or a FIN without one (SSLEOFError)."""
    ssl = sys.modules.get("ssl")  # loaded if conn can be an SSLSocket at all
    return ssl is not None and isinstance(exc, (ssl.SSLZeroReturnError, ssl.SSLEOFError))


def report_exception(log: Log | None) -> None:
    """Write the handler's traceback to the log: as Python prints it (control
    characters escaped), or as one JSON event."""
    try:
        import traceback

        text = traceback.format_exc()
        if log is not None and log.format == "json":
            import os

            error = text.rstrip("\n").rpartition("\n")[2]
            log.warning("handler-error", pid=os.getpid(), error=error, traceback=text)
            return
        from forkserve.core.logline import escape_controls

        text = escape_controls(text)  # the message may hold the client's bytes
        if log is not None:
            log.raw(text)  # never hangs the child on a log nobody reads (see _log)
            return
        sys.stderr.write(text)
        sys.stderr.flush()
    except Exception:  # noqa: BLE001, S110 - stderr gone: nothing else to tell
        pass
