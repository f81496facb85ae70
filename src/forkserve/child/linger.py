"""The lingering close: the client's input drained before the socket closes.

Closing a TCP socket whose peer's bytes are unread, or still to come, makes the
kernel answer with a reset, and a reset throws away whatever of our output the
kernel had not delivered yet: a handler that answers before reading all its client
sent (an early error reply, a ``QUIT`` followed by more commands) would see its
reply cut short. So, as nginx and Apache do, the end of our output is sent first
(a FIN, or over TLS a close_notify then a FIN: see child.tls), then what the client
still sends is read and dropped until its own end. The wait is bounded (``LINGER``,
``LINGER_IDLE``).

A plain connection lingers only when input is waiting unread once the handler has
returned: a client that sent nothing more is closed at once, as before, at the cost
of one non-blocking ``recv``.
"""

from __future__ import annotations

import errno
import socket
import time

# After our end of data, wait at most this long for the client's (nginx's
# lingering_time) ...
LINGER = 30.0
# ... and give up sooner once the client has acknowledged all we sent and nothing
# came from it for this long (nginx's lingering_timeout).
LINGER_IDLE = 5.0


def finish_plain(conn: socket.socket) -> None:
    """A handler has returned on a plain connection: if input is waiting unread,
    send our FIN and drain the client's input to its end (``linger``); the caller
    closes the socket. Does nothing when the handler closed the socket itself."""
    try:
        if not conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
            return  # the client's end, with nothing unread: a close sends no reset
    except OSError:
        return  # BlockingIOError: nothing unread; EBADF: closed by the handler; a reset
    try:
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        return
    linger(conn)


def linger(sock: socket.socket) -> None:
    """Read, and drop, what the client still sends, up to its end of data. Gives up
    after ``LINGER``, or after ``LINGER_IDLE`` of silence once the client has
    acknowledged everything; the socket's timeout is changed. Works on an
    ``ssl.SSLSocket`` too (its errors end the wait)."""
    deadline = time.monotonic() + LINGER
    buffer = bytearray(16384)
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(left, LINGER_IDLE))
        try:
            if not sock.recv_into(buffer):
                return
        except TimeoutError:
            if not unacknowledged(sock):
                return
        except ConnectionError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOTCONN and not is_ssl_error(exc):
                raise
            return


def is_ssl_error(exc: OSError) -> bool:
    """Whether ``exc`` is the TLS layer's (a close_notify, an EOF, a protocol error)."""
    import sys

    ssl = sys.modules.get("ssl")  # loaded if sock can be an SSLSocket at all
    return ssl is not None and isinstance(exc, ssl.SSLError)


def unacknowledged(sock: socket.socket) -> int:
    """How many bytes we sent that the peer has not acknowledged yet (SIOCOUTQ,
    our FIN included); 0 when the kernel will not say."""
    import fcntl
    import struct
    import termios

    try:
        answer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
    except OSError:
        return 0
    return int(struct.unpack("i", answer)[0])
