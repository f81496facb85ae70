"""Starting and ending a forker process (the supervisor's side; see parent.forker).

``launch`` starts ``python -m forkserve.forker`` with ``posix_spawn`` (no copy of the
supervisor's page tables, none of its memory) and hands it the recipe (``make_recipe``:
the settings and the handler, pickled); its first record is READY or its one-line
error (``greeting``). At start-up ``spawn`` waits for that record (a start-up step,
before the listen line); after it (a reload, a respawn) the supervisor's loop reads
it, and a start that takes longer than START_TIMEOUT fails (parent.forker).
"""

from __future__ import annotations

import errno
import os
import socket
import sys

from forkserve._errors import EXIT_TEMPORARY, ForkserveError
from forkserve.forker import wire

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from forkserve.config.values import Settings

# How long a new forker may take to build its service and say READY (its imports,
# the handler's, the TLS files): a start-up step, like the supervisor's own.
START_TIMEOUT = 30.0
# At a stop, how long a forker whose channel closed may take to exit before SIGKILL.
EXIT_TIMEOUT = 2.0
PR_SET_CHILD_SUBREAPER = 36


class StartFailed(ForkserveError):
    """The forker could not build the service: its exit code and one line."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def become_subreaper() -> None:
    """PR_SET_CHILD_SUBREAPER: a dead forker's children become ours, not init's."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def spawn(recipe: bytes) -> tuple[int, socket.socket]:
    """Start a forker with ``recipe`` and wait until it is ready (a start-up step);
    return its pid and the supervisor's end of its channel (non-blocking).

    Raises:
        StartFailed: see launch and greeting.
    """
    pid, ours = launch(recipe)
    try:
        ours.settimeout(START_TIMEOUT)
        first = ours.recv(wire.RECORD_SIZE)
    except (OSError, TimeoutError):
        first = b""
    failure = greeting(first)
    if failure is None:
        ours.setblocking(False)
        return pid, ours
    ours.close()
    os.waitpid(pid, 0)  # it exits at once once its channel is gone (or failed)
    raise failure


def launch(recipe: bytes) -> tuple[int, socket.socket]:
    """Start a forker with ``recipe``, without waiting for it: return its pid and the
    supervisor's end of its channel (non-blocking), on which its first record
    (see greeting) says whether it is ready.

    Raises:
        StartFailed: it could not be started (socketpair(2) or posix_spawn(3)
            failed: after --user, the interpreter may not be ours to run).
    """
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError as exc:
        raise StartFailed(EXIT_TEMPORARY, f"cannot start the forker: {exc}") from None
    try:
        os.set_inheritable(theirs.fileno(), True)
        argv = [sys.executable, "-m", "forkserve.forker", str(theirs.fileno())]
        pid = os.posix_spawn(sys.executable, argv, os.environ)
    except OSError as exc:
        ours.close()
        raise StartFailed(EXIT_TEMPORARY, f"cannot start the forker: {exc}") from None
    finally:
        theirs.close()
    ours.setblocking(False)
    try:
        ours.send(recipe)  # into an empty buffer: it fits, or it never will
    except OSError as exc:  # a recipe too big for the buffer; EPIPE: it died already
        if exc.errno not in (errno.EMSGSIZE, errno.EAGAIN, errno.ENOBUFS, errno.EPIPE):
            raise
        ours.shutdown(socket.SHUT_WR)  # it reads EOF, not a recipe: it fails, and says so
    return pid, ours


def greeting(first: bytes) -> StartFailed | None:
    """What a new forker's first record says: None when it is ready, else why not
    (its own error, or EOF: it exited before it was ready)."""
    if first:
        kind, *rest = wire.decode(first)[0]
        if kind == wire.READY:
            return None
        code, message = rest
        return StartFailed(int(code), str(message))  # type: ignore[call-overload]
    return StartFailed(EXIT_TEMPORARY, "the forker exited before it was ready")


def reap_forker(pid: int) -> None:
    """Wait up to EXIT_TIMEOUT for forker ``pid`` to exit (pidfd: no polling)."""
    import select

    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([pidfd], [], [], EXIT_TIMEOUT)[0]:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # reaped already
    finally:
        os.close(pidfd)


def make_recipe(settings: Settings, edge_settings: Settings, handler: object) -> bytes | None:
    """What a forker is started with: the settings, the handler (its name, a
    ``Program``, or an importable function) and ``sys.path``, pickled; None when
    the handler cannot be named to a fresh process (a lambda, a closure, a function
    of ``__main__``): the supervisor then forks itself, as before the forker."""
    from forkserve.child.exec import Program

    if settings.mode not in ("fork", "prefork"):  # prefork: see prefork.forked
        return None
    named = isinstance(handler, (str, Program))
    if not named and getattr(handler, "__module__", None) in (None, "__main__"):
        return None
    import pickle

    recipe = {"path": sys.path, "handler": handler, "settings": settings, "edge": edge_settings}
    try:
        return pickle.dumps(recipe)
    except (pickle.PicklingError, TypeError, AttributeError):
        return None
