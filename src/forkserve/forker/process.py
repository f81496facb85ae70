"""The forker's own process: build the service once, then fork one process per
connection the supervisor hands over, reap them, and report.

The supervisor (parent.forker) starts it with ``posix_spawn`` of the interpreter, so
it carries none of the supervisor's memory: what it forks is a bare interpreter, the
child-side code and the user's handler. Its loop writes almost nothing between forks
(no admission, no logs, no metrics: the supervisor keeps all of that), so a held
child keeps few private copies of its pages, and fork(2) copies few page tables.

The steps: read the recipe (the supervisor's settings and handler, pickled), build
the service exactly as the supervisor would (parent.assemble), report READY or the
error (exit 100 with its one line, as a start-up error of the supervisor); then
serve the channel (forker.wire) until the supervisor closes it, and leave once the
last child is reaped.

The forker ignores the signals an operator sends the server's process group: it
ends when its channel ends (or by SIGKILL, after which the supervisor adopts and
reaps its children: it is their subreaper).
"""

from __future__ import annotations

import array
import errno
import gc
import os
import select
import socket
import sys

from forkserve._errors import EXIT_USAGE, ForkserveError
from forkserve.child.ask import ASK_TIMEOUT, Asker
from forkserve.child.connection import Connection
from forkserve.forker import wire
from forkserve.parent.fork import fork_child
from forkserve.parent.signals import SERVER_SIGNALS, reset_in_child, signal_group

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forker stays free of typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from forkserve._log import Log
    from forkserve.child.handler import Service
    from forkserve.core.gate import Policy
    from forkserve.forker.workers import PoolShare


def main(argv: list[str]) -> int:
    """``python -m forkserve.forker FD``: serve the channel on descriptor FD."""
    if len(argv) != 1 or not argv[0].isdigit():
        print("forkserve forker: started by forkserve serve only", file=sys.stderr)
        return EXIT_USAGE
    fd = int(argv[0])
    close_others(fd)
    channel = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    try:
        service, policy, log = build(channel)
    except ForkserveError as exc:
        report_start(channel, (wire.FAILED, exc.exit_code, str(exc)))
        return exc.exit_code
    report_start(channel, (wire.READY, os.getpid()))
    warm(service)
    forker = Forker(channel, service, policy, log)
    gc.freeze()  # everything so far lives as long as the forker: out of the collector's way
    forker.run()
    return 0


def close_others(keep: int) -> None:
    """Close every descriptor but 0-2 and ``keep``: an inherited listener (socket
    activation passes inheritable ones) is the supervisor's alone."""
    from forkserve.child.fresh import highest_open_fd

    os.closerange(3, keep)
    os.closerange(keep + 1, highest_open_fd() + 1)


def report_start(channel: socket.socket, item: tuple[object, ...]) -> None:
    try:
        channel.send(wire.encode([item]))
    except OSError as exc:  # the supervisor is gone: nothing to tell
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
            raise


def build(channel: socket.socket) -> tuple[Service, Policy, Log]:
    """Read the recipe and build what each connection's process runs, as the
    supervisor built it (see parent.assemble.build_child_side).

    Raises:
        ForkserveError: the handler, the TLS files or a setting did not load here.
    """
    import pickle

    data = channel.recv(wire.RECORD_SIZE * 16)
    if not data:
        raise ForkserveError("the supervisor closed the channel before the recipe")
    try:
        recipe: dict[str, Any] = pickle.loads(data)  # noqa: S301 - our own supervisor's
    except Exception as exc:  # noqa: BLE001 - e.g. a handler that does not import here
        raise ForkserveError(f"the forker could not load the handler: {exc}") from None
    sys.path[:] = recipe["path"]
    from forkserve._log import Log
    from forkserve.parent.assemble import build_child_side

    settings = recipe["settings"]
    log = Log(settings.log_level, format=settings.log_format)
    _, policy, _, service = build_child_side(settings, recipe["edge"], recipe["handler"], log)
    if settings.user is not None or settings.group is not None:
        from forkserve.parent.privileges import is_current, resolve_identity, switch_identity

        identity = resolve_identity(settings.user, settings.group)
        if identity is not None and not is_current(identity):
            switch_identity(identity)
    del pickle, recipe
    sys.modules.pop("pickle", None)
    return service, policy, log


# Runs of a plain connection's path in the forker before it serves (see warm).
WARM_RUNS = 64


def warm(service: Service) -> None:
    """Run a plain connection's path through the child-side code WARM_RUNS times
    here, on a socketpair, with the built-in echo as the handler, before forking.

    Python 3.11 specializes a function's bytecode in place as it runs (the adaptive
    interpreter writes counters and specialized instructions into the code object).
    Code the forker never ran is specialized anew in every child, and each write
    copies a page of the forker's code objects into that child; run here once, every
    child inherits it specialized and shares those pages (docs/performance.md).

    Only what has no effect outside the socketpair runs: never the user's handler
    (the echo stands in), never the prelude's limits or banner (a bare prelude),
    never the PROXY or TLS edge (a service with an edge is not warmed). It runs
    after READY: connections sent meanwhile wait in the channel a few milliseconds.
    """
    from forkserve.child.handler import PythonService, echo
    from forkserve.child.prelude import Prelude

    if not isinstance(service, PythonService) or service.edge is not None:
        return
    stand_in = PythonService(echo, Prelude())
    for _ in range(WARM_RUNS):
        try:
            ours, theirs = socket.socketpair()
        except OSError:  # out of descriptors or memory: serve unwarmed
            return
        try:
            theirs.sendall(b"warm-up")
            theirs.shutdown(socket.SHUT_WR)
            stand_in(ours, Connection(("127.0.0.1", 0), 1, {}))
        finally:
            ours.close()
            theirs.close()


FD_SIZE = 4  # bytes of one descriptor in SCM_RIGHTS (a C int)
# For tests only (tests/integration/test_forker_orphans.py): the forker stops itself
# (SIGSTOP) right after each fork, before the child is reported started, so that a
# test can kill it in that window.
STOP_AFTER_FORK = os.environ.get("FORKSERVE_TEST_FORKER_STOP") == "after-fork"


def received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors in a recvmsg's SCM_RIGHTS data, in order."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % FD_SIZE])
    return list(fds)


def ignore(signum: int, frame: object) -> None:
    """The handler of the server's signals in the forker: they wake it, nothing more.

    Not SIG_IGN: a signal ignored is discarded even while blocked, so one the
    supervisor relayed to a child in the instant after its fork would be lost;
    caught, it stays pending in the child until its handlers are back to default.
    """


class Forker:
    """The loop: fork per connection, reap, report; until the channel ends and the
    last child is reaped.

    Resource handling: owns the channel, the wakeup socketpair, and each received
    descriptor until its child is forked (then the child's alone).
    """

    __slots__ = (
        "channel",
        "children",
        "log",
        "open",
        "policy",
        "pool",
        "reports",
        "service",
        "unclaimed",
        "wake",
    )

    def __init__(self, channel: socket.socket, service: Service, policy: Policy, log: Log) -> None:
        import signal

        self.channel = channel
        self.service = service
        self.policy = policy
        self.log = log
        self.children: set[int] = set()
        self.reports: list[tuple[object, ...]] = []
        self.open = True
        self.pool: PoolShare | None = None  # prefork: what every worker shares
        # The descriptors of the record being handled that no item has taken yet:
        # later connections' sockets, later workers' question channels. A child
        # forked meanwhile closes them (close_in_child): one that kept a sibling's
        # socket kept that connection open after the sibling's process ended, and
        # its client got no FIN (a handler that raised, a SIGKILL) until this child
        # ended too. (MSG_CMSG_CLOEXEC closes them at an exec only.)
        self.unclaimed: list[int] = []
        self.wake = socket.socketpair()
        for end in self.wake:
            end.setblocking(False)
        for sig in SERVER_SIGNALS:
            signal.signal(sig, ignore)
        signal.set_wakeup_fd(self.wake[1].fileno(), warn_on_full_buffer=False)

    def run(self) -> None:
        poller = select.poll()
        channel, wake = self.channel.fileno(), self.wake[0].fileno()
        poller.register(channel, select.POLLIN)
        poller.register(wake, select.POLLIN)
        while self.open or self.children:
            for fd, _ in poller.poll():
                if fd == wake:
                    self.clear_wake()
                    self.reap()
                elif self.receive() is False:
                    poller.unregister(channel)
            self.flush()

    def clear_wake(self) -> None:
        try:
            while self.wake[0].recv(4096):
                pass
        except BlockingIOError:
            pass

    def receive(self) -> bool:
        """Read every record waiting; False once the supervisor closed its end."""
        flags = socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC
        space = socket.CMSG_SPACE(2 * wire.MAX_BATCH * FD_SIZE)
        while True:
            # Not socket.recv_fds: Python 3.11's drops its flags argument.
            try:
                data, ancillary, msg_flags, _ = self.channel.recvmsg(wire.RECORD_SIZE, space, flags)
            except BlockingIOError:
                return True
            except ConnectionResetError:
                data, ancillary, msg_flags = b"", [], 0
            fds = received_fds(ancillary)
            if not data:
                self.open = False
                return False
            items = wire.decode(data)
            if msg_flags & socket.MSG_CTRUNC:
                self.lost(items, fds)
                continue
            fds.reverse()
            self.unclaimed = fds  # each item pops its own off the end
            for item in items:
                if item[0] == wire.CONN:
                    self.start(item, fds)
                elif item[0] == wire.KILL:
                    self.kill(item[1], item[2])  # type: ignore[arg-type]
                else:
                    self.for_pool(item, fds)

    def for_pool(self, item: tuple[Any, ...], fds: list[int]) -> None:
        """Prefork's items (see forker.workers): fork a worker, the descriptors all
        workers share, a signal to one worker."""
        from forkserve.forker.workers import PoolShare, start_worker

        kind = item[0]
        if kind == wire.WORKER:
            start_worker(self, item, fds)
        elif kind == wire.POOL:
            self.pool = PoolShare(fds)
        elif kind == wire.SIGNAL and item[1] in self.children:
            os.kill(item[1], item[2])

    def lost(self, items: list[tuple[object, ...]], fds: list[int]) -> None:
        """The kernel could not give us every descriptor of a record (EMFILE): the
        connections in it are lost; close the part that came."""
        for fd in fds:
            os.close(fd)
        for item in items:
            if item[0] in wire.LAUNCHES:
                self.reports.append((wire.LOST, item[1], errno.EMFILE))
            elif item[0] == wire.KILL:
                self.kill(item[1], item[2])  # type: ignore[arg-type]

    def start(self, item: tuple[Any, ...], fds: list[int]) -> None:
        """Fork the process for one connection (its descriptors are popped off
        ``fds``); closed here either way."""
        _, cid, peer, connnum, env, local, nfds = item
        conn = socket.socket(fileno=fds.pop())
        theirs = socket.socket(fileno=fds.pop()) if nfds == 2 else None
        info = Connection(peer, connnum, env)
        info.local = local
        close_in_child = self.close_in_child
        if theirs is not None:
            info.admit = Asker(self.policy, self.log, theirs, single=True)
            close_in_child = self.proxied_close_in_child(theirs)
        service = self.service
        try:
            pid = fork_child(lambda: service(conn, info), close_in_child)
        except OSError as exc:
            self.reports.append((wire.NOFORK, cid, exc.errno or 0))
            return
        finally:
            conn.close()
            if theirs is not None:
                theirs.close()
        self.children.add(pid)
        self.reports.append((wire.STARTED, cid, pid))
        if STOP_AFTER_FORK:
            os.kill(os.getpid(), 19)  # SIGSTOP: see STOP_AFTER_FORK

    def close_in_child(self) -> None:
        """In a fresh child: the forker's descriptors and handlers are not its own."""
        reset_in_child()
        os.close(self.channel.fileno())
        os.close(self.wake[0].fileno())
        os.close(self.wake[1].fileno())
        for fd in self.unclaimed:
            os.close(fd)
        self.log.in_child()

    def proxied_close_in_child(self, theirs: socket.socket) -> Callable[[], None]:
        def close_in_child() -> None:
            self.close_in_child()
            theirs.settimeout(ASK_TIMEOUT)

        return close_in_child

    def kill(self, pid: int, sig: int) -> None:
        """Signal a child's process group (the child and what it started); only a
        child not yet reaped, so never a reused pid."""
        if pid in self.children:
            signal_group(pid, sig)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.reports.append((wire.EXITED, pid, status))

    def flush(self) -> None:
        """Send the reports, a batch per record. Blocking: the supervisor reads its
        end from its loop, never stalls on it, and the forker has nothing else to do."""
        reports = self.reports
        if not reports:
            return
        self.reports = []
        if not self.open:
            return  # nobody to tell: the supervisor closed its end
        for first in range(0, len(reports), 512):
            try:
                self.channel.send(wire.encode(reports[first : first + 512]))
            except (BrokenPipeError, ConnectionResetError):
                self.open = False
                return
