"""The listening Unix-domain socket, and its socket file (issue 15).

``unix:PATH`` binds a socket file; ``unix:@NAME`` a name in Linux's abstract namespace,
which has no file and vanishes with its last descriptor (unix(7)). Each connection's
peer is its credentials from ``SO_PEERCRED``: ``(pid, uid, gid)`` of the process that
called connect(2), as the kernel recorded them then.

The socket file, as ucspi-unix's ``unixserver`` and s6-ipcserver treat it:

- created with ``--socket-mode`` (default: 0666 less the umask, unixserver's default),
  and chowned to ``--socket-user``/``--socket-group`` when given. bind(2) runs under a
  umask of 0777, so the file exists with no permission at all until its final mode is
  set: nobody connects through a mode wider than the one asked for.
- a **stale** file (a socket nobody listens on: connect(2) fails with ECONNREFUSED, as
  after a crash or a SIGKILL) is removed and bound again; a **live** one (connect
  succeeds, or the queue is full: EAGAIN) is an error, never stolen; and anything
  that is not a socket is never removed.
- removed when the server stops (``remove_file``), only if the file at the path is
  still the one this server created (same device and inode): a successor that bound
  the path since keeps its file. A server that handed its socket over (SIGUSR2) does
  not remove it; the new master does, when it stops. A socket systemd passed is
  systemd's: never removed.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

from forkserve._errors import BindError, UsageError
from forkserve.core.address import format_unix_address
from forkserve.parent.listeners import Listener, peer_credentials

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from forkserve.config.values import Settings

# What unixserver creates its socket with, less the umask (its -p default).
DEFAULT_SOCKET_MODE = 0o666


class UnixListener(Listener):
    """A bound, listening, non-blocking Unix-domain stream socket.

    Args:
        sock: the listening AF_UNIX socket.
        owned: bound by this process, or handed over by the master it upgraded.

    Resource handling: owns the socket; ``close()`` closes it (children close their
    copy: the file stays). ``remove_file()`` removes the socket file, once.
    """

    __slots__ = ("file_id", "path", "text")
    unix = True
    FAMILIES: tuple[int, ...] = (socket.AF_UNIX,)

    def __init__(self, sock: socket.socket, owned: bool = True) -> None:
        super().__init__(sock, owned)
        name = sock.getsockname()
        self.text = format_unix_address(name)  # kept: the socket may be closed first
        # A file system path, or None for an abstract (or unnamed) socket.
        self.path: str | None = name if isinstance(name, str) and name else None
        # (st_dev, st_ino) of the socket file this server may remove at its stop.
        self.file_id: tuple[int, int] | None = None
        if owned and self.path is not None:
            self.file_id = socket_file_id(self.path)

    @classmethod
    def bind_unix(
        cls,
        address: str | bytes,
        backlog: int,
        mode: int | None = None,
        owner: tuple[int, int] | None = None,
    ) -> UnixListener:
        """Bind and listen on ``address`` (a path, or ``b"\\0NAME"``).

        Args:
            mode: the socket file's permissions; None: 0666 less the umask.
            owner: ``(uid, gid)`` to chown the file to (-1 leaves one unchanged).

        Raises:
            BindError: in use by a live server, not a socket, a missing directory,
                permission denied (exit 111).
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bind_replacing_stale(sock, address)
            if isinstance(address, str):
                set_file_mode(address, mode, owner)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @property
    def address(self) -> tuple[str, int]:
        """Not an IP address: ``(UNIX_TEXT, 0)``; see ``describe``."""
        return self.describe(), 0

    @property
    def port(self) -> int:
        return 0

    def describe(self) -> str:
        """``unix:PATH`` or ``unix:@NAME``."""
        return self.text

    def printable(self) -> str:
        """What ``--print-port`` prints: the path, or ``@NAME``."""
        return self.text.removeprefix("unix:")

    def accept(self) -> tuple[socket.socket, object]:
        """Accept one connection; its peer is ``(pid, uid, gid)`` (``SO_PEERCRED``).

        Raises:
            BlockingIOError, OSError: as ``Listener.accept``.
        """
        conn, _ = self.sock.accept()
        return conn, peer_credentials(conn)

    def disown(self) -> None:
        """A new master took the socket over (SIGUSR2): its file is the new one's."""
        self.file_id = None

    def remove_file(self) -> bool:
        """Remove the socket file if it is still the one bound here; whether it was.

        Error handling: a file removed or replaced meanwhile is left alone; a failed
        unlink (EACCES in a directory the server's --user cannot write) is reported
        as False.
        """
        if self.path is None or self.file_id is None:
            return False
        if socket_file_id(self.path) != self.file_id:
            return False
        self.file_id = None
        try:
            os.unlink(self.path)  # noqa: PTH108 - no pathlib in the parent
        except OSError:  # ENOENT: gone meanwhile; EACCES, EPERM: not ours to remove
            return False
        return True


def socket_file_id(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the socket file at ``path``; None when none is there."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISSOCK(info.st_mode) else None


def bind_replacing_stale(sock: socket.socket, address: str | bytes) -> None:
    """bind(2) ``sock`` to ``address``; a stale socket file there is removed first.

    Raises:
        BindError: the address is live, not a socket, or cannot be bound.
    """
    where = format_unix_address(address)
    old_umask = os.umask(0o777)  # the file is born inaccessible: see set_file_mode
    try:
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not isinstance(address, str):
                raise bind_error(where, exc) from None
        else:
            return
        check_stale(address, where)
        try:
            os.unlink(address)  # noqa: PTH108 - no pathlib in the parent
            sock.bind(address)
        except OSError as exc:
            raise bind_error(where, exc) from None
    finally:
        os.umask(old_umask)


def check_stale(path: str, where: str) -> None:
    """Return if the socket file at ``path`` is stale (nobody listens on it).

    Raises:
        BindError: a server listens on it, or it is not a socket.
    """
    if socket_file_id(path) is None:
        raise BindError(f"cannot listen on {where}: the file exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return  # stale: a server died without removing it
    except BlockingIOError:
        pass  # EAGAIN: a live server whose queue is full
    except OSError as exc:
        raise bind_error(where, exc) from None
    finally:
        probe.close()
    raise BindError(f"cannot listen on {where}: address already in use by a running server")


def bind_error(where: str, exc: OSError) -> BindError:
    """The one-line error of a failed bind."""
    if exc.errno == errno.EADDRINUSE:
        return BindError(f"cannot listen on {where}: address already in use")
    if exc.errno == errno.ENOENT:
        return BindError(f"cannot listen on {where}: the directory does not exist")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return BindError(f"cannot listen on {where}: permission denied")
    return BindError(f"cannot listen on {where}: {exc.strerror}")


def set_file_mode(path: str, mode: int | None, owner: tuple[int, int] | None) -> None:
    """Give the new socket file its owner, then its mode (0666 less the umask when
    ``mode`` is None), in that order: until chmod it has mode 0, so nobody connects
    before it has the owner and mode it is meant to have.

    Raises:
        BindError: chown or chmod failed (exit 111).
    """
    if mode is None:
        umask = os.umask(0o777)
        os.umask(umask)
        mode = DEFAULT_SOCKET_MODE & ~umask
    try:
        if owner is not None:
            os.chown(path, *owner)
        os.chmod(path, mode)  # noqa: PTH101 - no pathlib in the parent
    except OSError as exc:
        os.unlink(path)  # noqa: PTH108 - no pathlib in the parent
        what = "chown" if owner is not None and exc.errno == errno.EPERM else "chmod"
        raise BindError(f"cannot {what} {path}: {exc.strerror}") from None


SOCKET_FILE_OPTIONS = (
    "--socket-mode/--socket-user/--socket-group apply to a socket file forkserve "
    "creates: serve unix:PATH"
)
PROXY_FROM_UNIX = (
    "--proxy-from lists IP networks, and a Unix socket's clients have none: its file's "
    "permissions (--socket-mode) say who may connect"
)


def open_unix(
    address: object, backlog: int, settings: Settings, fd: int | None, owned: bool
) -> Listener:
    """Adopt ``fd`` (either family: see ``adopt_listener``), or bind ``unix:PATH`` or
    ``unix:@NAME`` with --socket-mode/-user/-group.

    Raises:
        UsageError: a socket file option with no socket file to apply it to (a TCP
            address, an abstract name, an inherited socket); an unknown user or
            group; --proxy-from on a Unix socket.
        BindError: see ``UnixListener.bind_unix``.
    """
    from forkserve.core.address import is_unix_address, parse_unix_address
    from forkserve.parent.privileges import resolve_owner

    where = None
    if fd is None and isinstance(address, str) and is_unix_address(address):
        where = parse_unix_address(address)
    if settings.socket_file_options and not isinstance(where, str):
        raise UsageError(SOCKET_FILE_OPTIONS)
    if where is None:
        if fd is None:
            raise UsageError("no address to listen on, and no socket passed (LISTEN_FDS)")
        listener = adopt_listener(fd, owned)
    else:
        owner = resolve_owner(settings.socket_user, settings.socket_group)
        listener = UnixListener.bind_unix(where, backlog, settings.socket_mode, owner)
    if settings.proxy_from and listener.unix:
        listener.close()
        listener.remove_file()
        raise UsageError(PROXY_FROM_UNIX)
    return listener


def adopt_listener(fd: int, owned: bool) -> Listener:
    """An inherited listening socket (socket activation, an upgrade): TCP or Unix.

    Raises:
        UsageError: ``fd`` is not a socket.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise UsageError(f"descriptor {fd} passed to serve on: {exc.strerror}") from None
    family = sock.family
    sock.detach()
    if family == socket.AF_UNIX:
        return UnixListener.from_fd(fd, owned)
    return Listener.from_fd(fd, owned)
