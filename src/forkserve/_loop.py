"""The parent's main loop: wait, handle signals, reap, accept while below the limit.

It reads like s6-tcpserverd's loop. One selector holds the signal pipe and the
listener; the only timeouts are the ones a state needs (an accept pause, the grace
period, the kill wait), so an idle server sleeps in epoll_wait with no timeout and
uses no CPU.
"""

from __future__ import annotations

import collections
import errno
import gc
import selectors
import signal
import socket
import time
from collections.abc import Callable

from forkserve._address import format_address
from forkserve._children import ChildTable, Exited
from forkserve._forking import fork_child
from forkserve._handler import Connection, Service
from forkserve._listen import Listener
from forkserve._log import Log
from forkserve._signals import SignalPipe

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from typing import Any

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
# At most this many accepts per wakeup, so signals (a stop, a burst of exits) are
# looked at between batches even under a connection flood.
ACCEPT_BATCH = 64
# After SIGTERM to the children, wait this long before SIGKILL.
KILL_AFTER = 3.0


def source_of(peer: Any) -> str:
    """The client address a connection counts against: the peer's host."""
    return peer[0] if isinstance(peer, tuple) else ""


class Loop:
    """The parent's state and event handlers. ``run()`` returns when stopped.

    Resource handling: the listener belongs to the caller, but the loop closes it when
    a stop begins (so the kernel refuses new clients at once, rather than queueing
    them for a server that is leaving).
    """

    def __init__(
        self,
        listener: Listener,
        service: Service,
        log: Log,
        *,
        max_conns: int,
        grace: float,
        ready: Callable[[], None] | None = None,
    ) -> None:
        self.listener: Listener | None = listener
        self.service = service
        self.log = log
        self.max_conns = max_conns
        self.grace = grace
        self.ready = ready
        self.children = ChildTable()
        # Connections accepted while draining at the limit: served as slots free up.
        self.pending: collections.deque[tuple[socket.socket, Any]] = collections.deque()
        self.listening = False
        self.paused_until = 0.0
        self.burst: tuple[str, int] | None = None  # (errno name, failures) while paused
        self.stopping: str | None = None  # None, "graceful" or "fast"
        self.phase = ""  # while stopping: "drain", "term" or "kill"
        self.deadline: float | None = None
        self.sel: selectors.BaseSelector = selectors.DefaultSelector()
        self.sigs: SignalPipe | None = None

    def run(self) -> None:
        with SignalPipe() as sigs, self.sel:
            self.sigs = sigs
            self.sel.register(sigs, selectors.EVENT_READ)
            # Everything allocated so far lives as long as the parent: keep the
            # collector away from it, so a child never copies pages just to scan them.
            gc.freeze()
            if self.ready is not None:
                self.ready()
            while not self.finished():
                self.update_listening()
                events = self.sel.select(self.timeout())
                if any(key.fileobj is sigs for key, _ in events):
                    self.on_signals(sigs.drain())
                if self.listening and any(key.fileobj is self.listener for key, _ in events):
                    self.accept_batch()
                self.on_timers()
        self.sigs = None

    def finished(self) -> bool:
        return self.stopping is not None and not self.children and not self.pending

    def active(self) -> str:
        return f"{len(self.children)}/{self.max_conns}"

    # -- waiting ------------------------------------------------------------------

    def update_listening(self) -> None:
        """Register the listener only while a connection could be taken now.

        At --max-conns it leaves the selector and the kernel's backlog is the queue.
        """
        listener = self.listener
        if listener is None:
            return  # closed, and close_listener() unregistered it
        want = (
            self.stopping is None
            and len(self.children) < self.max_conns
            and time.monotonic() >= self.paused_until
        )
        if want != self.listening:
            if want:
                self.sel.register(listener, selectors.EVENT_READ)
            else:
                self.sel.unregister(listener)
            self.listening = want

    def timeout(self) -> float | None:
        now = time.monotonic()
        waits = []
        if self.paused_until > now and self.listener is not None:
            waits.append(self.paused_until - now)
        if self.deadline is not None:
            waits.append(max(0.0, self.deadline - now))
        return min(waits) if waits else None

    # -- signals and children -------------------------------------------------------

    def on_signals(self, signals: list[int]) -> None:
        for number in signals:
            if number == signal.SIGCHLD:
                continue  # reaped below, once for the whole batch
            if number in (signal.SIGTERM, signal.SIGINT):
                if self.stopping is None:
                    self.begin_graceful_stop(number)
                elif number == signal.SIGINT:
                    self.begin_fast_stop(number)  # a second Ctrl-C: stop now
            elif number == signal.SIGQUIT:
                self.begin_fast_stop(number)
            else:
                self.log.debug("signal-ignored", signal=signal.Signals(number).name)
        if signal.SIGCHLD in signals:
            self.on_exits(self.children.reap())

    def on_exits(self, exits: list[Exited]) -> None:
        now = time.monotonic()
        for ended in exits:
            if ended.child is None:
                self.log.debug("end-unknown", pid=ended.pid, **ended.status_fields())
                continue
            fields: dict[str, object] = {"pid": ended.pid, "peer": ended.child.peer}
            fields.update(ended.status_fields())
            fields["duration"] = f"{now - ended.child.started:.3f}s"
            fields["conns"] = self.active()
            self.log.info("end", **fields)
        while self.pending and len(self.children) < self.max_conns:
            self.start_child(*self.pending.popleft())

    # -- accepting -------------------------------------------------------------------

    def accept_one(self) -> tuple[socket.socket, Any] | None:
        """Accept one connection, applying the errno policy; None when there is none.

        Raises:
            OSError: an errno no policy names: a bug, so it crashes loudly.
        """
        assert self.listener is not None
        while True:
            try:
                conn, peer = self.listener.accept()
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno in CONNECTION_ERRNOS:
                    continue
                if exc.errno in CAPACITY_ERRNOS:
                    self.pause_accepting(errno.errorcode[exc.errno])
                    return None
                raise
            if self.burst is not None:
                name, failures = self.burst
                self.log.notice("accept-resumed", after=name, failures=failures)
                self.burst = None
            return conn, peer

    def accept_batch(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if len(self.children) >= self.max_conns or self.paused_until:
                return
            accepted = self.accept_one()
            if accepted is None:
                return
            self.start_child(*accepted)

    def pause_accepting(self, reason: str) -> None:
        """Stop accepting for ACCEPT_PAUSE; log only the first failure of a burst."""
        if self.burst is None:
            self.log.warning("accept-paused", error=reason, pause=f"{ACCEPT_PAUSE}s")
            self.burst = (reason, 0)
        self.burst = (self.burst[0], self.burst[1] + 1)
        self.paused_until = time.monotonic() + ACCEPT_PAUSE

    def start_child(self, conn: socket.socket, peer: Any) -> None:
        """Fork a child for ``conn``; the parent's copy is closed either way."""
        peer_text = format_address(peer)
        source = source_of(peer)
        info = Connection(peer, self.children.open_from(source) + 1)
        try:
            pid = fork_child(conn, info, self.service, self.close_in_child)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self.log.warning("fork-failed", peer=peer_text, error=name)
            self.pause_accepting(f"fork:{name}")
            return
        finally:
            conn.close()
        self.children.add(pid, peer_text, source)
        self.log.info("accept", peer=peer_text, pid=pid, conns=self.active())

    def close_in_child(self) -> None:
        """Undo the parent's set-up in a fresh child (see fork_child)."""
        self.sel.close()
        if self.listener is not None:
            self.listener.close()
        if self.sigs is not None:
            self.sigs.close_in_child()
        for other, _ in self.pending:
            other.close()

    # -- stopping --------------------------------------------------------------------

    def close_listener(self) -> None:
        if self.listener is None:
            return
        if self.listening:
            self.sel.unregister(self.listener)
            self.listening = False
        self.listener.close()
        self.listener = None

    def begin_graceful_stop(self, number: int) -> None:
        """Serve what already completed its handshake, then stop accepting and drain.

        Connections waiting in the backlog are accepted until EAGAIN before the
        listener closes: closing it with them queued would reset clients that had
        connected successfully (gunicorn issue 3397). Past --max-conns they wait in
        ``pending`` for a slot, within the same grace period.
        """
        self.stopping = "graceful"
        if self.listener is not None:
            while (accepted := self.accept_one()) is not None:
                if len(self.children) < self.max_conns:
                    self.start_child(*accepted)
                else:
                    self.pending.append(accepted)
        self.close_listener()
        self.phase = "drain"
        self.deadline = time.monotonic() + self.grace
        self.log.notice(
            "stop",
            signal=signal.Signals(number).name,
            mode="graceful",
            conns=self.active(),
            queued=len(self.pending),
            grace=f"{self.grace}s",
        )

    def begin_fast_stop(self, number: int) -> None:
        """Stop at once: close the listener, drop the queue, terminate every child."""
        self.stopping = "fast"
        self.close_listener()
        self.log.notice(
            "stop", signal=signal.Signals(number).name, mode="fast", conns=self.active()
        )
        self.terminate_children()

    def terminate_children(self) -> None:
        for conn, _ in self.pending:
            conn.close()
        if self.pending:
            self.log.warning("dropped", queued=len(self.pending))
            self.pending.clear()
        if self.children:
            self.log.notice("terminate", signal="SIGTERM", children=len(self.children))
        self.children.signal_all(signal.SIGTERM)
        self.phase = "term"
        self.deadline = time.monotonic() + KILL_AFTER

    def on_timers(self) -> None:
        now = time.monotonic()
        if self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0
        if self.deadline is None or now < self.deadline:
            return
        if self.phase == "drain":
            self.terminate_children()
        elif self.phase == "term":
            self.log.warning("kill", signal="SIGKILL", children=len(self.children))
            self.children.signal_all(signal.SIGKILL)
            self.phase = "kill"
            self.deadline = None
