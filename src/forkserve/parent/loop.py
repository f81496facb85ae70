"""What both process models' parents share: the loop skeleton, signals, and stopping.

The loop reads like s6-tcpserverd's: wait, handle signals first (SIGCHLD reaps every
finished child), then whatever else became ready, then timers. The only timeouts are
the ones a state needs, so an idle parent sleeps in epoll_wait with no timeout and
uses no CPU. ``ForkLoop`` (fork mode) and ``PreforkLoop`` (prefork mode) fill in what
differs: what a connection is given to, and what an exit means.
"""

from __future__ import annotations

import collections
import gc
import selectors
import signal
import socket
import time
from collections.abc import Callable

from forkserve._log import Log
from forkserve.child.ask import ASK_TIMEOUT, Asker
from forkserve.child.connection import Connection
from forkserve.child.handler import Service
from forkserve.core.address import format_address, host_of
from forkserve.core.errnames import errno_name
from forkserve.core.gate import Policy, Timers
from forkserve.parent.admission import LIFETIME_KILL_AFTER, Admission
from forkserve.parent.children import ChildTable, Exited
from forkserve.parent.fork import fork_child
from forkserve.parent.listeners import (
    ACCEPT_BACK_OFF,
    ACCEPT_PAUSE,
    ACCEPT_RETRY,
    Listener,
    accept_action,
)
from forkserve.parent.operations import Operations
from forkserve.parent.signals import SignalPipe

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from typing import Any

    from forkserve.config.reload import ReloadPlan

# After SIGTERM to the children, wait this long before SIGKILL.
KILL_AFTER = 3.0


class Supervisor(Admission, Operations):
    """The parent's loop and stop sequence. ``run()`` returns once stopped.

    Stopping, gracefully (SIGTERM, SIGINT): ``begin_graceful_stop`` lets the subclass
    stop taking connections; children then have ``grace`` seconds, after which
    ``expire_grace`` asks them to end (SIGTERM) and, KILL_AFTER seconds
    later, whatever is left gets SIGKILL. Fast (SIGQUIT, a second SIGINT): straight to
    ``expire_grace``.
    """

    def __init__(
        self,
        listener: Listener,
        service: Service,
        log: Log,
        *,
        grace: float,
        ready: Callable[[], None] | None,
        policy: Policy | None = None,
    ) -> None:
        self.listener: Listener | None = listener
        self.policy = policy if policy is not None else Policy()
        self.gate = self.policy.gate
        # --max-lifetime: a FIFO of deadlines (all the same length), then of kills.
        lifetime = self.policy.max_lifetime
        self.lifetimes = Timers(lifetime, self.lifetime_current) if lifetime else None
        self.lifetime_kills = Timers(LIFETIME_KILL_AFTER, self.kill_current)
        self.service = service
        self.log = log
        self.grace = grace
        self.ready = ready
        self.children = ChildTable()
        self.stopping: str | None = None  # None, "graceful" or "fast"
        self.phase = ""  # while stopping: "drain", "term" or "kill"
        self.deadline: float | None = None
        self.sel: selectors.DefaultSelector = selectors.DefaultSelector()
        self.sigs: SignalPipe | None = None
        # Connections accepted at a stop while at the limit: served as slots free up.
        self.pending: collections.deque[tuple[socket.socket, Any]] = collections.deque()
        # Behind the PROXY protocol: each child's question channel until answered.
        self.questions: dict[int, socket.socket] = {}
        self.paused_until = 0.0
        self.burst: tuple[str, int] | None = None  # (errno name, failures) while paused
        self.init_operations()

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped. A selector key whose data is callable is a callback,
        ``data(mask)``; the others go to ``on_ready``."""
        with SignalPipe() as sigs, self.sel:
            self.sigs = sigs
            self.sel.register(sigs, selectors.EVENT_READ)
            self.log.attach(self.sel)  # a full log is watched until it has room
            if self.endpoint is not None:
                self.endpoint.attach(self.sel)
            self.start()
            # Everything allocated so far lives as long as the parent: keep the
            # collector away from it, so a child never copies pages just to scan them.
            gc.freeze()
            if self.ready is not None:
                self.ready()
            if self.status is not None:
                self.status.ready(self.active())
            try:
                while not self.finished():
                    self.before_wait()
                    self.notify_status()
                    # Records taken already: a handler that ran after its wakeup
                    # byte was read must not wait for the next event.
                    events = self.sel.select(0.0 if sigs.arrived else self.timeout())
                    if any(key.fileobj is sigs for key, _ in events):
                        sigs.clear()
                    if sigs.arrived:
                        self.on_signals(sigs.take())
                    for key, mask in events:
                        if callable(key.data):  # the metrics endpoint, an upgrade
                            key.data(mask)
                        elif key.fileobj is not sigs:
                            self.on_ready(key, mask)
                    self.on_timers(time.monotonic())
            finally:
                self.log.detach()
                self.close_endpoint()
        self.sigs = None

    def timeout(self) -> float | None:
        """Seconds until the nearest deadline, or None to wait for events only."""
        now = time.monotonic()
        every = (
            self.deadline,
            *self.operations_deadlines(),
            *self.deadlines(),
            *self.lifetime_deadlines(),
        )
        deadlines = [d for d in every if d is not None]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def on_signals(self, signals: list[int]) -> None:
        for number in signals:
            if number in (signal.SIGTERM, signal.SIGINT):
                if self.stopping is None:
                    self.stopping = "graceful"
                    self.begin_graceful_stop(signal.Signals(number).name)
                    self.phase = "drain"
                    self.deadline = time.monotonic() + self.grace
                elif number == signal.SIGINT and self.stopping == "graceful":
                    self.fast_stop(signal.Signals(number).name)  # a second Ctrl-C
            elif number == signal.SIGQUIT and self.stopping != "fast":
                self.fast_stop(signal.Signals(number).name)
            elif number in (signal.SIGTTIN, signal.SIGTTOU):
                self.on_pool_signal(number)
            elif number == signal.SIGUSR2:
                self.begin_upgrade()
            elif number == signal.SIGHUP:
                self.reload()
            elif number != signal.SIGCHLD:
                self.log.debug("signal-ignored", signal=signal.Signals(number).name)
        if signal.SIGCHLD in signals:
            exits = self.children.reap()
            self.forget_lifetimes(exits)
            self.on_exits(self.upgrade_exits(exits))
        self.notify_status()  # STOPPING=1 at once: the loop may end this turn

    def fast_stop(self, signame: str) -> None:
        if self.stopping is None:
            self.begin_graceful_stop(signame, fast=True)
        self.stopping = "fast"
        self.log.notice("stop", signal=signame, mode="fast", conns=self.active())
        self.end_children()

    def end_children(self) -> None:
        """Ask every child to end now; SIGKILL follows KILL_AFTER seconds later."""
        self.expire_grace()
        self.phase = "term"
        self.deadline = time.monotonic() + KILL_AFTER

    def on_timers(self, now: float) -> None:
        self.operations_timers(now)
        self.on_deadlines(now)
        self.on_lifetime_deadlines(now)
        if self.deadline is None or now < self.deadline:
            return
        if self.phase == "drain":
            self.end_children()
        elif self.phase == "term":
            self.log.warning("kill", signal="SIGKILL", children=len(self.children))
            self.children.signal_all(signal.SIGKILL)
            self.phase = "kill"
            self.deadline = None

    def apply_reload(self, plan: ReloadPlan) -> None:
        """A SIGHUP's checked settings, for new connections: the log, the grace
        period, the upgrade timeout, the admission policy and the service; the
        process model takes its own limits (``reconfigure``)."""
        self.log.level = plan.log_level
        self.log.set_format(plan.log_format)
        self.grace = plan.grace
        self.upgrade_timeout = plan.upgrade_timeout
        self.policy = plan.policy
        self.gate = plan.policy.gate
        self.service = plan.service
        self.reconfigure(plan)

    # -- accepting --------------------------------------------------------------------

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
                action = accept_action(exc.errno)
                if action == ACCEPT_RETRY:
                    continue
                if action == ACCEPT_BACK_OFF:
                    self.pause_accepting(errno_name(exc.errno))
                    return None
                raise  # ACCEPT_CLOSED too: nothing shuts fork mode's listener down
            if self.burst is not None:
                name, failures = self.burst
                self.log.notice("accept-resumed", after=name, failures=failures)
                self.burst = None
            return conn, peer

    def pause_accepting(self, reason: str) -> None:
        """Stop accepting for ACCEPT_PAUSE; log only the first failure of a burst."""
        if self.burst is None:
            self.log.warning("accept-paused", error=reason, pause=f"{ACCEPT_PAUSE}s")
            self.burst = (reason, 0)
        self.burst = (self.burst[0], self.burst[1] + 1)
        self.paused_until = time.monotonic() + ACCEPT_PAUSE

    def fork_connection(self, conn: socket.socket, peer: Any) -> None:
        """Admit ``conn`` and fork a child that serves it; the parent's copy is closed
        either way. A connection the gate refuses is closed at once, costing no fork.
        Behind the PROXY protocol the child decides instead (see fork_proxied)."""
        taken = time.monotonic()
        peer_text = format_address(peer)
        if self.policy.proxy:
            self.fork_proxied(conn, peer, peer_text, taken)
            return
        verdict = self.admit(conn, peer_text, host_of(peer))
        if verdict is None:
            return
        info = Connection(peer, self.open_from(verdict.source) + 1, verdict.env)
        self.start_child(
            conn, info, peer_text, verdict.source, taken=taken, close_in_child=self.close_in_child
        )

    def fork_proxied(self, conn: socket.socket, peer: Any, peer_text: str, taken: float) -> None:
        """Fork a child for a connection that starts with a PROXY header: the child
        reads it, applies the rules to the client it names, and asks about the
        per-source limits on a channel made here (see child.ask); until then the
        connection counts against no source. A refused client costs no handler."""
        try:
            # Non-blocking from the start: the parent's end never waits, and the
            # child's gets its timeout in the child.
            kind = socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK
            ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
        except OSError as exc:  # EMFILE, ENFILE: as a failed fork
            conn.close()
            self.fork_failed(peer_text, exc)
            return
        info = Connection(peer)
        info.admit = Asker(self.policy, self.log, theirs, single=True)

        def close_in_child() -> None:
            self.close_in_child()
            ours.close()
            theirs.settimeout(ASK_TIMEOUT)

        pid = self.start_child(
            conn, info, peer_text, None, taken=taken, close_in_child=close_in_child
        )
        theirs.close()
        if pid is None:
            ours.close()
        else:
            self.watch_question(pid, ours)

    def start_child(
        self,
        conn: socket.socket,
        info: Connection,
        peer_text: str,
        source: int | None,
        *,
        taken: float,
        close_in_child: Callable[[], None],
    ) -> int | None:
        """Fork the child that serves ``conn`` (closed here, in the parent), counted
        against ``source``; return its pid, or None when fork failed."""
        service = self.service
        try:
            pid = fork_child(lambda: service(conn, info), close_in_child)
        except OSError as exc:
            self.fork_failed(peer_text, exc)
            return None
        finally:
            conn.close()
        child = self.children.add(pid, peer_text, source)
        self.start_lifetime(child)
        self.metrics.accepted()
        self.metrics.forked(child.started - taken)
        self.log.info("accept", peer=peer_text, pid=pid, conns=self.active())
        return pid

    def fork_failed(self, peer_text: str, exc: OSError) -> None:
        name = errno_name(exc.errno)
        self.log.warning("fork-failed", peer=peer_text, error=name)
        self.metrics.rejected("fork-failed")
        self.pause_accepting(f"fork:{name}")

    def log_child_end(self, ended: Exited, now: float) -> None:
        """The ``end`` line of a reaped connection child (or a debug line if unknown);
        its question channel, if still open, closes now."""
        named = self.close_question(ended.pid) if self.questions else ""
        if ended.child is None:
            self.log.debug("end-unknown", pid=ended.pid, **ended.status_fields())
            return
        self.metrics.exited(ended.exit_code, ended.signal_number)
        self.metrics.ended(now - ended.child.started)
        fields: dict[str, object] = {"pid": ended.pid, "peer": named or ended.child.peer}
        fields.update(ended.status_fields())
        fields["duration"] = f"{now - ended.child.started:.3f}s"
        fields["conns"] = self.active()
        self.log.info("end", **fields)

    def serve_pending(self) -> None:
        while self.pending and self.has_slot():
            self.fork_connection(*self.pending.popleft())

    # -- stopping ------------------------------------------------------------------------

    def begin_graceful_stop(self, signame: str, fast: bool = False) -> None:
        """Take what already completed its handshake, stop listening, then serve it.

        Connections waiting in the backlog are accepted until EAGAIN before the
        listener closes: closing it with them queued would reset clients that had
        connected successfully (gunicorn issue 3397). The listener closes at once
        after that, before any fork: a client whose handshake completed while the
        stop forked would be queued, then reset by the close (62 of a 64-client
        flood were). From the close on, clients are refused (ECONNREFUSED). Only a
        handshake completing in the instant between the last accept and the close
        can still be reset: the kernel offers no way to close a listener and keep
        its queue. Accepted connections are served as slots allow; past the limit
        they wait in ``pending``, within the same grace period. A fast stop skips
        the drain.
        """
        if self.listener is not None and not fast:
            while (accepted := self.accept_one()) is not None:
                self.pending.append(accepted)
        self.stop_listening()
        self.serve_pending()
        if not fast:
            self.log.notice(
                "stop",
                signal=signame,
                mode="graceful",
                conns=self.active(),
                queued=len(self.pending),
                grace=f"{self.grace}s",
            )

    def expire_grace(self) -> None:
        """Drop what is still queued and ask every child to end now."""
        for conn, _ in self.pending:
            conn.close()
        if self.pending:
            self.log.warning("dropped", queued=len(self.pending))
            self.metrics.rejected("dropped", len(self.pending))
            self.pending.clear()
        if self.children:
            self.log.notice("terminate", signal="SIGTERM", children=len(self.children))
        self.terminate_children()

    def finished(self) -> bool:
        return self.stopping is not None and not self.children and not self.pending

    def stop_listening(self) -> None:
        """Close the listener: the kernel refuses new clients from now on."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def terminate_children(self) -> None:
        self.children.signal_all(signal.SIGTERM)

    # -- what the process models fill in ------------------------------------------------

    def close_in_child(self) -> None:
        """Undo the parent's set-up in a fresh connection child (see fork_child)."""
        raise NotImplementedError

    def start(self) -> None:
        """Set up before the loop first waits (prefork starts its workers here)."""

    def close(self) -> None:
        """Release what the model holds beyond the loop itself."""

    def before_wait(self) -> None:
        """Adjust what the selector watches before each wait."""

    def deadlines(self) -> tuple[float | None, ...]:
        """The model's own deadlines (monotonic times), besides the stop deadline."""
        return ()

    def on_deadlines(self, now: float) -> None:
        """Act on the model's own deadlines that have passed."""

    def on_ready(self, key: selectors.SelectorKey, mask: int) -> None:
        """A descriptor other than the signal pipe is ready."""

    def on_pool_signal(self, number: int) -> None:
        self.log.debug("signal-ignored", signal=signal.Signals(number).name)

    def on_exits(self, exits: list[Exited]) -> None:
        raise NotImplementedError

    def has_slot(self) -> bool:
        """Whether one more connection may be served now."""
        raise NotImplementedError

    def active(self) -> str:
        """``busy/limit`` for the logs."""
        return f"{self.busy()}/{self.capacity()}"

    def busy(self) -> int:
        """Connections being served now."""
        raise NotImplementedError

    def capacity(self) -> int:
        """Connections served at once, at most."""
        raise NotImplementedError
