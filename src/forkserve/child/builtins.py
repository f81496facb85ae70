"""Built-in services, the ones inetd has always offered: ``--handler NAME``.

Each is an ordinary handler (``handler(conn, peer)``), so each runs in a process of
its own like any other, and a client that goes away ends it quietly (exit 0). Each
runs over TLS too, where ``conn`` is an ``ssl.SSLSocket``: no recv flags, a
non-blocking read or write raises SSLWantReadError or SSLWantWriteError, and
OpenSSL may hold decrypted bytes that poll(2) on the socket does not announce.

- ``echo``: RFC 862, every byte back until the client closes (in ``child.handler``).
- ``discard``: RFC 863, read and drop until the client closes.
- ``daytime``: RFC 867, one human-readable line with the date, then close.
- ``chargen``: RFC 864, the rotating 72-character lines until the client closes.
"""

from __future__ import annotations

import errno
import select
import socket
import sys
import time

from forkserve.child.handler import ECHO_FIRST_BUFFER, Handler, echo

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    import ssl
    from typing import Any, TypeGuard

# RFC 864: the 95 printing ASCII characters (space to tilde), 72 per line, each
# line starting one character further on; CRLF ends a line.
CHARGEN_CHARACTERS = bytes(range(32, 127))
CHARGEN_LINE_LENGTH = 72
# The pattern repeats after one line per character: send it in blocks this large.
CHARGEN_BLOCK_LINES = len(CHARGEN_CHARACTERS)


def chargen_line(number: int) -> bytes:
    """Line ``number`` (from 0) of RFC 864's pattern, with its CRLF."""
    chars = CHARGEN_CHARACTERS
    start = number % len(chars)
    doubled = chars + chars
    return doubled[start : start + CHARGEN_LINE_LENGTH] + b"\r\n"


def chargen_block() -> bytes:
    """One whole period of the pattern: 95 lines, 7,030 bytes."""
    return b"".join(chargen_line(n) for n in range(CHARGEN_BLOCK_LINES))


def daytime_line(now: float) -> bytes:
    """RFC 867's answer: the local date and time, as inetd writes it (ctime(3) form).

    The RFC prescribes no syntax, only "ASCII printing characters, space, carriage
    return, and line feed"; inetd's internal service writes ``ctime()`` and CRLF,
    e.g. ``Tue Nov 24 23:57:56 2026\\r\\n``.
    """
    return time.ctime(now).encode("ascii") + b"\r\n"


def discard(conn: socket.socket, peer: Any) -> None:
    """RFC 863 discard: read and drop everything until the client closes."""
    buf = bytearray(ECHO_FIRST_BUFFER)
    while conn.recv_into(buf):
        pass


def daytime(conn: socket.socket, peer: Any) -> None:
    """RFC 867 daytime: send one date line and close; input is ignored."""
    conn.sendall(daytime_line(time.time()))
    if is_tls(conn):
        from forkserve.child.tls import end_tls

        end_tls(conn)  # close_notify, then the FIN: SSLSocket.shutdown() sends no alert
        return
    try:
        conn.shutdown(socket.SHUT_WR)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:  # the client has already gone: nothing to do
            raise


def chargen(conn: socket.socket, peer: Any) -> None:
    """RFC 864 chargen: send the pattern until the client closes; input is dropped.

    Sends whole 95-line periods, so the pattern continues across sends. Received
    data is read and thrown away (the RFC says so, and a client that writes must
    not stall). It ends when a send fails because the client closed: the reset
    ends the child quietly with exit 0; or when a socket timeout (``--idle-timeout``)
    passes with the client neither reading nor writing (exit 124).
    """
    block = memoryview(chargen_block())
    sink = bytearray(ECHO_FIRST_BUFFER)
    # With --idle-timeout the socket has a timeout: poll(2) must honour it too.
    timeout = conn.gettimeout()
    wait_ms = None if timeout is None else max(1, round(timeout * 1000))
    would_block = would_block_errors(conn)
    conn.setblocking(False)
    poller = select.poll()
    poller.register(conn, select.POLLOUT | select.POLLIN)
    reading = True
    sent = 0
    while True:
        ready = poller.poll(wait_ms)
        if not ready:
            raise TimeoutError("chargen: the client neither read nor wrote")
        for _, events in ready:
            if reading and events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                reading = drop_input(conn, sink, would_block)
                if not reading:  # the client is done writing, maybe not reading
                    poller.modify(conn, select.POLLOUT)
            # POLLHUP or POLLERR: the send below raises and ends the child.
            if events & (select.POLLOUT | select.POLLHUP | select.POLLERR):
                try:
                    # Over TLS a send the socket could not take is retried with
                    # the same bytes, as OpenSSL requires: ``sent`` is unchanged.
                    sent = (sent + conn.send(block[sent:])) % len(block)
                except would_block:
                    pass


def is_tls(conn: socket.socket) -> TypeGuard[ssl.SSLSocket]:
    """Whether ``conn`` is an ``ssl.SSLSocket``, without importing ``ssl`` (a plain
    connection's process never needs it: an SSLSocket exists only once it is loaded)."""
    module = sys.modules.get("ssl")
    return module is not None and isinstance(conn, module.SSLSocket)


def would_block_errors(conn: socket.socket) -> tuple[type[OSError], ...]:
    """What a non-blocking read or write on ``conn`` raises when it would wait."""
    if is_tls(conn):
        module = sys.modules["ssl"]
        return (module.SSLWantReadError, module.SSLWantWriteError)
    return (BlockingIOError,)


def drop_input(
    conn: socket.socket, sink: bytearray, would_block: tuple[type[OSError], ...]
) -> bool:
    """Read what is waiting and drop it; False once the client has shut down writing.

    Over TLS it reads on while OpenSSL holds decrypted bytes (``pending()``), which
    no poll on the socket would announce.
    """
    pending = getattr(conn, "pending", None)
    try:
        while conn.recv_into(sink):
            if pending is None or not pending():
                return True
    except would_block:
        return True
    return False


BUILTINS: dict[str, Handler] = {
    "echo": echo,
    "discard": discard,
    "daytime": daytime,
    "chargen": chargen,
}
