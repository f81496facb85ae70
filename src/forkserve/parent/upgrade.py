"""SIGUSR2: a zero-downtime upgrade to a freshly executed copy of the server.

As nginx and gunicorn do it: the running master (the old one) forks and execs its own
command line (``sys.executable`` and ``sys.orig_argv``, so new code is loaded), handing
over its listening sockets the way systemd's socket activation does (descriptors 3,
4; ``LISTEN_FDS``, ``LISTEN_PID``, ``LISTEN_FDNAMES``), plus two variables of its own:

- ``FORKSERVE_UPGRADE_FROM``: the old master's pid (the new one logs it, and does not
  print ``--print-port`` again: the port is the same, and stdout is the old one's);
- ``FORKSERVE_READY_FD``: the write end of a pipe. The new master writes
  ``READY <pid>`` there once it serves; end of file without it means it failed.

The socket is never closed nor shut down in between: both masters accept from the
same kernel queue for a moment, so no client is refused. Once the new master is
ready the old one stops accepting (it closes its copies; a prefork master closes its
workers' alive pipe, never shutdown(2), which would stop the socket for the new
master too), drains its own connections within ``--grace`` and exits. Its children
are its own: the new master never sees them. If the new master exits first, or is
not ready within ``--upgrade-timeout``, the old one keeps serving and says so.
"""

from __future__ import annotations

import fcntl  # here, not in the child: after --user the stdlib may be unreadable
import os
import signal
import sys

from forkserve.core.activation import METRICS_NAME
from forkserve.core.errnames import errno_name
from forkserve.parent.signals import block, reset_in_child, unblock

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping

    from forkserve._log import Log
    from forkserve.parent.children import Exited
    from forkserve.parent.loop import Loop

UPGRADE_FROM = "FORKSERVE_UPGRADE_FROM"
READY_FD = "FORKSERVE_READY_FD"
# Set when the old master had bound the listener itself (not systemd): the new master
# then owns it too, and a prefork stop may shut it down (see prefork.pool).
OWNED = "FORKSERVE_LISTEN_OWNED"
UPGRADE_VARIABLES = (UPGRADE_FROM, READY_FD, OWNED)


class Upgrade:
    """An upgrade started by the old master ``loop``: waiting for the new one, then
    (once handed over) only remembering its pid, which is still the old master's child.

    Resource handling: owns the read end of the ready pipe, registered in the loop's
    selector until the new master answers, fails or times out; its deadline is
    registered with the loop as long as it waits. The new master is in the loop's
    child table as this object's (``on_exit``), counted as no connection.
    """

    __slots__ = (
        "due",
        "handed_over",
        "loop",
        "pid",
        "ready_r",
        "reply",
        "timeout",
    )

    def __init__(self, loop: Loop, pid: int, ready_r: int, now: float, timeout: float) -> None:
        self.loop = loop
        self.pid = pid
        self.ready_r = ready_r
        self.timeout = timeout
        self.due: float | None = now + timeout
        self.reply = b""
        self.handed_over = False
        loop.watch(ready_r, self.on_pipe)
        loop.add_timer(self)
        loop.children.adopt(pid, self)

    def on_pipe(self, mask: int) -> None:
        if self.ready_r < 0:
            return  # closed earlier in this turn of the loop (its exit was reaped)
        try:
            data = os.read(self.ready_r, 256)
        except BlockingIOError:
            return
        self.reply += data
        if self.reply.startswith(b"READY ") and self.reply.endswith(b"\n"):
            self.finish()
            self.handed_over = True
            self.loop.hand_over(self.pid)
        elif not data:
            self.failed("exited-before-ready")

    def failed(self, reason: str) -> None:
        self.finish()
        self.loop.log.warning("upgrade-failed", pid=self.pid, reason=reason)
        self.loop.metrics.operation("upgrade-failed")

    def deadline(self) -> float | None:
        return self.due

    def on_deadline(self, now: float) -> None:
        if self.due is not None and now >= self.due:
            self.finish()
            self.loop.log.warning(
                "upgrade-failed", pid=self.pid, reason="timeout", timeout=f"{self.timeout}s"
            )
            self.loop.metrics.operation("upgrade-failed")
            # SIGTERM: a graceful stop of the new master, which closes its copies of
            # the sockets and never shuts them down (they are not its own yet).
            os.kill(self.pid, signal.SIGTERM)

    def on_exit(self, ended: Exited, now: float) -> None:
        """The new master exited (it failed, or it ended long after the handover)."""
        if self.ready_r >= 0:  # reaped before its pipe was read: read it now
            self.on_pipe(0)
        if self.ready_r >= 0:  # no READY, no end of file (a child holds it)
            self.failed("exited-before-ready")
        self.finish()
        self.loop.log.notice("upgrade-exit", pid=self.pid, **ended.status_fields())
        self.loop.upgrading.ended(self)

    def finish(self) -> None:
        """Stop waiting for the new master: close the pipe, drop the deadline."""
        if self.ready_r >= 0:
            self.loop.unwatch(self.ready_r)
            os.close(self.ready_r)
            self.ready_r = -1
        if self.due is not None:
            self.due = None
            self.loop.drop_timer(self)

    def close_in_child(self) -> None:
        if self.ready_r >= 0:
            os.close(self.ready_r)


def start_upgrade(loop: Loop, now: float, timeout: float) -> Upgrade | None:
    """SIGUSR2: start the new master; None (logged) if it could not be started."""
    listener = loop.model.listener
    assert listener is not None
    sockets = [(listener.fileno(), "forkserve")]
    if loop.endpoint is not None:
        sockets.append((loop.endpoint.listener.fileno(), METRICS_NAME))
    notify = loop.status.notifier.value if loop.status is not None else None
    try:
        pid, ready_r = start_new_master(
            sockets, listener.owned, notify, loop.close_in_child, loop.log
        )
    except OSError as exc:
        loop.log.warning("upgrade-failed", reason="fork", error=errno_name(exc.errno))
        return None
    loop.log.notice("upgrade", pid=pid, argv=" ".join(sys.orig_argv))
    return Upgrade(loop, pid, ready_r, now, timeout)


def start_new_master(
    sockets: list[tuple[int, str]],
    owned: bool,
    notify_socket: str | None,
    close_in_child: Callable[[], None],
    log: Log,
) -> tuple[int, int]:
    """Fork and exec the new master with ``sockets`` as descriptors 3, 4, ...

    Args:
        sockets: ``(fd, name)`` to hand over, in order.
        owned: whether the old master bound the listener itself.
        notify_socket: systemd's ``NOTIFY_SOCKET``, which the old master removed
            from its environment and the new master needs.
        close_in_child: the old master's own clean-up for a forked child.
        log: where the child reports an exec that failed.

    Returns:
        ``(pid, ready_r)``: the new master, and the read end of its ready pipe.

    Raises:
        OSError: pipe(2) or fork(2) failed; nothing was started.

    Resource handling: the new master stays in the old one's process group, so a
    terminal's Ctrl-C or a supervisor's group signal reaches both.
    """
    ready_r, ready_w = os.pipe()
    os.set_blocking(ready_r, False)
    block()
    try:
        pid = os.fork()
    except OSError:
        unblock()
        os.close(ready_r)
        os.close(ready_w)
        raise
    if pid == 0:
        try:
            _exec_new_master(sockets, ready_w, owned, notify_socket, close_in_child, log)
        except BaseException as exc:  # noqa: BLE001 - a bug: say so, never return
            log.warning("upgrade-exec-failed", pid=os.getpid(), error=repr(exc))
        finally:
            os._exit(111)
    unblock()
    os.close(ready_w)
    return pid, ready_r


def _exec_new_master(  # noqa: PLR0917 - one call site, in the forked child
    sockets: list[tuple[int, str]],
    ready_w: int,
    owned: bool,
    notify_socket: str | None,
    close_in_child: Callable[[], None],
    log: Log,
) -> None:
    """In the forked child: move the sockets to 3, 4, ..., set the variables, exec.

    Exec fails (and the child exits 111, logged) when the new user after
    ``--user`` cannot run the Python interpreter (one under /root, say)."""
    # Above every target first, so that moving one never overwrites another.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd, _ in (*sockets, (ready_w, ""))]
    log.move_out_of_the_way(64)  # its own descriptor (see _log) must survive the moves
    close_in_child()  # closes the originals, the selector, the signal pipe...
    reset_in_child()
    for target, fd in enumerate(high, start=3):
        os.dup2(fd, target)  # inheritable
        os.close(fd)
    env = dict(os.environ)
    env.update(
        LISTEN_FDS=str(len(sockets)),
        LISTEN_PID=str(os.getpid()),
        LISTEN_FDNAMES=":".join(name for _, name in sockets),
    )
    env[UPGRADE_FROM] = str(os.getppid())
    env[READY_FD] = str(3 + len(sockets))
    if owned:
        env[OWNED] = "1"
    if notify_socket is not None:
        env["NOTIFY_SOCKET"] = notify_socket
    unblock()
    argv = [sys.executable, *sys.orig_argv[1:]]
    try:
        os.execve(sys.executable, argv, env)  # noqa: S606 - no shell, by design
    except OSError as exc:
        name = errno_name(exc.errno)
        log.warning("upgrade-exec-failed", pid=os.getpid(), program=sys.executable, error=name)


class Handover:
    """The new master's side: who it replaces, and how to tell it that it serves."""

    __slots__ = ("from_pid", "owned", "ready_fd")

    def __init__(self, from_pid: int, ready_fd: int, owned: bool) -> None:
        self.from_pid = from_pid
        self.ready_fd = ready_fd
        self.owned = owned

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Handover | None:
        """Take (and remove) the upgrade variables; None when not started by one."""
        values = [environ.pop(name, None) for name in UPGRADE_VARIABLES]
        from_pid, ready_fd, owned = values
        if from_pid is None or ready_fd is None or not (from_pid + ready_fd).isdigit():
            return None
        try:
            os.set_inheritable(int(ready_fd), False)
        except OSError:
            return None  # stale variables, not an upgrade: there is no pipe
        return cls(int(from_pid), int(ready_fd), owned == "1")

    def report_ready(self) -> None:
        """Tell the old master this one serves; it may be gone already (EPIPE).

        Never waits: the pipe is fresh and empty, and its write end is this
        process's alone, so O_NONBLOCK on it changes nothing for anyone else.
        """
        try:
            os.set_blocking(self.ready_fd, False)
            os.write(self.ready_fd, f"READY {os.getpid()}\n".encode())
        except (BrokenPipeError, BlockingIOError):
            pass  # the old master stopped meanwhile: this one serves on regardless
        finally:
            os.close(self.ready_fd)
