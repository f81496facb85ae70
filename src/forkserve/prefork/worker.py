"""A prefork worker: a reusable process that serves one connection at a time.

Workers share the supervisor's listening socket. Each waits in an epoll of its own
where the listener is registered with EPOLLEXCLUSIVE, so a new connection wakes one
idle worker rather than all of them (the thundering herd), and a busy worker is not
waiting at all: the kernel's accept queue holds clients until a worker is free. A
shared queue, not SO_REUSEPORT per worker: with one queue per worker, a connection
hashed to a busy worker waits while others are idle, and a retiring worker's queue
is reset (measurements in docs/benchmarks.md).

The worker tells the supervisor what it does with one datagram per change, on a
SOCK_DGRAM socketpair shared by all workers (datagrams keep their boundaries, and
each send is atomic): ``R pid`` ready, ``A pid peer`` accepted, ``E pid code`` ended,
``P pid errno`` accept paused for lack of a resource, ``U pid errno`` resumed.

Access control (see child.ask): the rules need no shared state, so the worker applies
them itself (a denied client costs no message but a ``D`` for the metrics). The
per-source limits (``--per-ip``, ``--rate``) need every worker's connections, which
only the supervisor sees: with them on, or with the PROXY protocol, the worker asks
on a channel of its own (a SOCK_SEQPACKET pair) and waits for the answer, which
replaces the ``A`` report. Without PROXY it decides right after accept; with PROXY
it reports ``A`` at once (it is busy reading the header) and decides once the header
names the client, inside the service's edge.

Signals, as the supervisor uses them:
    SIGTERM: retire: exit now if idle, else after the current connection.
    SIGQUIT: end now: the worker dies by SIGTERM, as a fork-mode child would.
    EOF on the "alive" pipe (the supervisor is stopping, or gone): exit once idle.
    At a stop the supervisor also shuts the listening socket down (after serving
    what was queued: see prefork.pool, Pool.stop); accept then fails with
    EINVAL, which also means: exit.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # C functions: no enum conversions
import errno
import os
import select
import signal
import socket

from forkserve._log import Log
from forkserve.child.ask import ASK_TIMEOUT, Asker
from forkserve.child.connection import Connection
from forkserve.child.handler import Service
from forkserve.core.address import format_address
from forkserve.core.errnames import errno_name
from forkserve.core.gate import Policy
from forkserve.parent.listeners import (
    ACCEPT_BACK_OFF,
    ACCEPT_CLOSED,
    ACCEPT_PAUSE,
    ACCEPT_RETRY,
    accept_action,
    peer_credentials,
)
from forkserve.prefork.wire import encode

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from types import FrameType


SIGTERM = int(signal.SIGTERM)
SIGQUIT = int(signal.SIGQUIT)


def _die_now(signum: int, frame: FrameType | None) -> None:
    """SIGQUIT: end at once, by SIGTERM, so the status reads as in fork mode."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    os.kill(os.getpid(), signal.SIGTERM)


class Worker:
    """The worker's state; ``run()`` is its whole life and returns its exit code.

    Resource handling: owns, in the worker process, its copies of the listener, the
    status socket and the alive pipe; they close when the process exits.
    """

    def __init__(
        self,
        listener: socket.socket,
        status: socket.socket,
        alive_fd: int,
        service: Service,
        max_requests: int,
        *,
        policy: Policy,
        log: Log,
        channel: socket.socket | None = None,
    ) -> None:
        self.listener = listener
        self.status = status
        self.alive_fd = alive_fd
        self.service = service
        self.max_requests = max_requests
        self.policy = policy
        self.log = log
        self.channel = channel  # the per-worker question channel (see child.ask)
        self.asker = Asker(policy, log, channel, report=self.report)
        self.pid = 0  # known once forked: set in install_signals
        self.wake_r, self.wake_w = socket.socketpair()
        self.retiring = False
        self.paused: str | None = None  # the errno name while accept lacks a resource

    def install_signals(self) -> None:
        """Called in the fresh worker while signals are still blocked (see fork_child)."""
        self.pid = os.getpid()
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        # The C functions with ints, as parent.signals.reset_in_child: the signal
        # module's wrappers go through enum, and every object that touches is a
        # page the worker copies from the process it was forked from.
        _signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        _signal.signal(SIGTERM, self._retire)
        _signal.signal(SIGQUIT, _die_now)
        if self.channel is not None:
            self.channel.settimeout(ASK_TIMEOUT)

    def close_in_parent(self) -> None:
        """In the supervisor, once forked (or not): the wakeup pair is the worker's."""
        self.wake_r.close()
        self.wake_w.close()

    def _retire(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM: set the flag at once, not only through the wakeup pipe. The
        handler runs as soon as poll() returns, so a worker woken by a connection
        and the retire signal together (a reload) never accepts it with the old
        settings: the wakeup byte may land after poll() collected its events."""
        self.retiring = True

    def report(self, kind: str, detail: str = "") -> None:
        report_status(self.status, kind, self.pid, detail)

    def run(self) -> int:
        poller = select.epoll()
        poller.register(self.listener.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
        poller.register(self.wake_r.fileno(), select.EPOLLIN)
        poller.register(self.alive_fd, select.EPOLLIN)
        self.report("R")
        served = 0
        pause = -1.0
        while not self.retiring:
            ready = {fd for fd, _ in poller.poll(pause)}
            pause = -1.0
            if self.wake_r.fileno() in ready:
                self.retiring = signal.SIGTERM in self._drain_wakeups() or self.retiring
            if self.alive_fd in ready:
                return 0
            if self.retiring or self.listener.fileno() not in ready:
                continue
            outcome = self.accept_and_serve()
            if outcome == "closed":
                return 0
            if outcome == "paused":
                pause = ACCEPT_PAUSE
            elif outcome == "served":
                served += 1
                if self.max_requests and served >= self.max_requests:
                    return 0
        return 0

    def accept_and_serve(self) -> str:
        """Accept one connection if one is waiting and serve it to its end.

        Returns:
            "served", "none" (another worker took it), "paused" (out of a resource)
            or "closed" (the supervisor shut the listener down: the server stops).
        """
        try:
            conn, peer = self.listener.accept()
        except BlockingIOError:
            return "none"
        except OSError as exc:
            action = accept_action(exc.errno)
            if action == ACCEPT_RETRY:
                return "none"
            if action == ACCEPT_BACK_OFF:
                if self.paused is None:  # once per burst, as fork mode logs it
                    self.paused = errno_name(exc.errno)
                    self.report("P", self.paused)
                return "paused"
            if action == ACCEPT_CLOSED:
                return "closed"
            raise
        if self.paused is not None:
            self.report("U", self.paused)
            self.paused = None
        if type(peer) is not tuple:  # a Unix socket's: the peer is its credentials
            peer = peer_credentials(conn)
        return self.serve(conn, peer)

    def serve(self, conn: socket.socket, peer: object) -> str:
        """Admit (rules here, per-source limits by asking: see child.ask) and serve one
        connection; behind the PROXY protocol, admission waits for the header.

        Returns:
            "served", or "none" when it was refused (closed and logged).
        """
        peer_text = format_address(peer)
        info = Connection(peer)
        if self.policy.proxy:  # busy now, with its header to read: decided then
            self.report("A", peer_text)
            info.admit = self.asker
        elif self.asker.admit(conn, info, peer_text) is not None:
            return "none"
        elif self.channel is None:  # an answer to a question counted it already
            self.report("A", peer_text)
        code = self.service(conn, info)
        self.report("E", str(code))
        return "served"

    def _drain_wakeups(self) -> list[int]:
        received: list[int] = []
        while True:
            try:
                data = self.wake_r.recv(256)
            except BlockingIOError:
                return received
            received.extend(data)
            if not data:
                return received


def report_status(status: socket.socket, kind: str, pid: int, detail: str = "") -> None:
    """Tell the supervisor (a status datagram: prefork.wire); if it is gone there is
    no one to serve for: exit."""
    try:
        status.send(encode(kind, pid, detail))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.EPIPE, errno.ENOTCONN):
            os._exit(0)
        raise
