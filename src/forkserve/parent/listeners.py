"""The listening socket."""

from __future__ import annotations

import errno
import socket
import sys
from types import TracebackType

from forkserve._errors import AddressError, BindError
from forkserve.config.defaults import DEFAULT_BACKLOG
from forkserve.core.address import format_address

# accept(2) errors that mean "out of a resource": log once per burst, stop accepting
# for ACCEPT_PAUSE, try again. Spinning on them at 100% CPU is what tcpserver and many
# event loops do; trio's serve_listeners pauses the same way.
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Errors that belong to one connection, not to the listener: skip it and go on.
# ECONNABORTED (gunicorn's workers/sync.py ignores it too), and the network errors
# accept(2) on Linux may pass on from the new socket ("Error handling" in the man page).
CONNECTION_ERRNOS = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EPERM,  # a firewall rule refused it after the handshake
    }
)
ACCEPT_PAUSE = 0.1
# struct ucred (SO_PEERCRED): pid, uid, gid, three 32-bit ints in host order.
UCRED_SIZE = 12

# What an accept(2) error means: accept_action's answers.
ACCEPT_RETRY = "retry"  # one connection's error: go on to the next
ACCEPT_BACK_OFF = "pause"  # out of a resource: stop accepting for ACCEPT_PAUSE
ACCEPT_CLOSED = "closed"  # the listener was shut down (EINVAL)
ACCEPT_RAISE = "raise"  # no policy names it: a bug, crash loudly


def accept_action(number: int | None) -> str:
    """The accept errno policy, one for fork mode and the prefork workers.

    Args:
        number: the ``OSError.errno`` accept(2) failed with (EAGAIN, "nothing
            waiting", is the caller's BlockingIOError, not an error).

    Returns:
        ACCEPT_RETRY for CONNECTION_ERRNOS, ACCEPT_BACK_OFF for CAPACITY_ERRNOS,
        ACCEPT_CLOSED for EINVAL (listen(2) no longer holds: a prefork worker's
        supervisor shut the shared listener down to stop the pool; in fork mode
        nothing does, so the loop raises on it), else ACCEPT_RAISE.
    """
    if number in CONNECTION_ERRNOS:
        return ACCEPT_RETRY
    if number in CAPACITY_ERRNOS:
        return ACCEPT_BACK_OFF
    if number == errno.EINVAL:
        return ACCEPT_CLOSED
    return ACCEPT_RAISE


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """A Unix-domain connection's peer: ``(pid, uid, gid)`` from ``SO_PEERCRED``
    (what the client process was when it called connect(2)), as plain ints."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED_SIZE)
    order = sys.byteorder
    return (
        int.from_bytes(raw[0:4], order, signed=True),
        int.from_bytes(raw[4:8], order),
        int.from_bytes(raw[8:12], order),
    )


class Listener:
    """A bound, listening, non-blocking TCP socket (``UnixListener``: a Unix one).

    Args:
        sock: the listening socket.
        owned: bound by this process. An inherited socket (from systemd, or from
            the master this one upgraded) is another's too, and is never shut down.

    Resource handling: owns the socket; ``close()`` closes it. Children close their
    inherited copy right after fork.
    """

    def __init__(self, sock: socket.socket, owned: bool = True) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.owned = owned

    @classmethod
    def bind(cls, host: str, port: int, backlog: int = DEFAULT_BACKLOG) -> Listener:
        """Bind and listen on ``host:port`` (the first address ``host`` resolves to).

        ``::`` accepts IPv4 too (dual stack: IPV6_V6ONLY off); any other IPv6
        address is IPv6 only.

        Raises:
            AddressError: the host does not resolve (exit 100).
            BindError: the address is in use, not local, or not permitted (exit 111).
        """
        try:
            infos = socket.getaddrinfo(
                host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
            )
        except socket.gaierror as exc:
            raise AddressError(f"cannot resolve {host!r}: {exc.strerror}") from None
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            # SO_REUSEADDR: a restart binds at once instead of failing for a minute
            # while old connections sit in TIME_WAIT (the seed lacked it).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                dual = sockaddr[0] == "::"
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            where = format_address((host, port))
            if exc.errno == errno.EADDRINUSE:
                raise BindError(f"cannot listen on {where}: address already in use") from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise BindError(f"cannot listen on {where}: permission denied") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise BindError(
                    f"cannot listen on {where}: not an address of this machine"
                ) from None
            raise BindError(f"cannot listen on {where}: {exc.strerror}") from None
        return cls(sock)

    unix = False  # a Unix-domain socket (UnixListener)
    # The address families from_fd adopts (UnixListener: AF_UNIX).
    FAMILIES: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)

    @classmethod
    def from_fd(cls, fd: int, owned: bool = False) -> Listener:
        """Adopt an inherited listening socket (socket activation, or an upgrade).

        Raises:
            UsageError: ``fd`` is not a listening TCP socket (forkserve serves TCP;
                a Unix socket from a socket unit is refused here, not at accept).
        """
        from forkserve._errors import UsageError

        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise UsageError(f"descriptor {fd} passed to serve on: {exc.strerror}") from None
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.family not in cls.FAMILIES or sock.type != socket.SOCK_STREAM or not listening:
            sock.detach()
            raise UsageError(
                f"descriptor {fd} passed to serve on is not a listening TCP or Unix stream socket"
            )
        return cls(sock, owned)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``; the real port when port 0 was asked for."""
        name = self.sock.getsockname()
        return name[0], name[1]

    @property
    def port(self) -> int:
        return self.address[1]

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, object]:
        """Accept one connection; the new socket is blocking and not inheritable.

        Raises:
            BlockingIOError: nothing is waiting.
            OSError: as accept(2); the caller's policy decides what each errno means.
        """
        return self.sock.accept()

    def describe(self) -> str:
        return format_address(self.address)

    def printable(self) -> str:
        """What ``--print-port`` prints: the bound port."""
        return str(self.port)

    def remove_file(self) -> bool:
        """A TCP socket has no file to remove at a stop (see UnixListener)."""
        return False

    def disown(self) -> None:
        """A new master took the socket over: nothing here is this one's to remove."""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
