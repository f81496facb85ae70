"""Fork mode's process model: accept while below --max-conns, fork a child per connection.

``Connections`` forks and ends one child per connection (prefork uses it too, for
what it accepts at a stop); ``Acceptor`` accepts under the errno policy; ``ForkModel``
watches the listener while a connection could be taken and is what the loop serves
with (see parent.loop for the process-model interface).
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import time

from forkserve.child.ask import ASK_TIMEOUT, Asker
from forkserve.child.connection import Connection
from forkserve.child.handler import Service
from forkserve.core.address import format_address, host_of
from forkserve.parent.acceptor import Acceptor as Acceptor  # noqa: PLC0414 - its old home
from forkserve.parent.children import Exited
from forkserve.parent.fork import fork_child
from forkserve.parent.spawn import spawner_for, spawns

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from forkserve.config.reload import ReloadPlan
    from forkserve.parent.forker import Forkers
    from forkserve.parent.listeners import Listener
    from forkserve.parent.loop import Loop

# At most this many accepts per wakeup, so signals (a stop, a burst of exits) are
# looked at between batches even under a connection flood.
ACCEPT_BATCH = 64


class Connections:
    """One child per connection: admitted, forked, timed, ended and logged.

    Resource handling: each accepted socket is closed in the parent once its child is
    forked (or refused, or dropped at a stop); ``pending`` holds the ones accepted at
    a stop while every slot was taken.
    """

    __slots__ = (
        "acceptor",
        "admission",
        "close_in_child",
        "forkers",
        "loop",
        "pending",
        "service",
        "spawn",
    )

    def __init__(self, loop: Loop, acceptor: Acceptor, service: Service) -> None:
        self.loop = loop
        self.admission = loop.admission
        self.acceptor = acceptor
        self.service = service
        self.spawn = spawner_for(service, loop)  # a program started without a fork
        self.close_in_child = loop.close_in_child
        self.pending: collections.deque[tuple[socket.socket, Any]] = collections.deque()
        # The forker that forks connections' processes (parent.forker); None: fork here.
        self.forkers: Forkers | None = None

    def use(self, service: Service) -> None:
        """A reload's service: children forked from now on run it."""
        self.service = service
        self.spawn = spawner_for(service, self.loop)

    def fork(self, conn: socket.socket, peer: Any) -> None:
        """Admit ``conn`` and fork a child that serves it; the parent's copy is closed
        either way. A connection the gate refuses is closed at once, costing no fork.
        Behind the PROXY protocol the child decides instead (see fork_proxied)."""
        taken = time.monotonic()
        peer_text = format_address(peer)
        admission = self.admission
        if admission.policy.proxy:
            self.fork_proxied(conn, peer, peer_text, taken)
            return
        verdict = admission.admit(conn, peer_text, host_of(peer))
        if verdict is None:
            return
        info = Connection(peer, admission.open_from(verdict.source) + 1, verdict.env)
        if self.forkers is not None and self.spawn is None:  # a spawn needs no forker
            self.forkers.submit(conn, info, peer_text, verdict.source, taken)
            return
        self.start_child(conn, info, peer_text, verdict.source, taken, self.close_in_child)

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
        if self.forkers is not None:
            self.forkers.submit(conn, info, peer_text, None, taken, (ours, theirs))
            return
        info.admit = Asker(self.admission.policy, self.loop.log, theirs, single=True)

        def close_in_child() -> None:
            self.close_in_child()
            ours.close()
            theirs.settimeout(ASK_TIMEOUT)

        pid = self.start_child(conn, info, peer_text, None, taken, close_in_child)
        theirs.close()
        if pid is None:
            ours.close()
        else:
            self.admission.watch_question(pid, ours)

    def start_child(  # noqa: PLR0917 - the per-connection path: no keyword dicts
        self,
        conn: socket.socket,
        info: Connection,
        peer_text: str,
        source: int | None,
        taken: float,
        close_in_child: Callable[[], None],
    ) -> int | None:
        """Fork the child that serves ``conn`` (closed here, in the parent), counted
        against ``source``; return its pid, or None when fork failed. A program
        nothing must run before is spawned instead (parent.spawn): None when it
        could not run (logged there)."""
        service = self.service
        try:
            if self.spawn is not None:
                pid = self.spawn(conn, info, peer_text)
                if pid is None:
                    return None
            else:
                pid = fork_child(lambda: service(conn, info), close_in_child)
        except OSError as exc:
            self.fork_failed(peer_text, exc)
            return None
        finally:
            conn.close()
        loop = self.loop
        child = loop.children.add(pid, peer_text, source, self)
        self.admission.start_lifetime(child)
        loop.metrics.accepted()
        loop.metrics.forked(child.started - taken)
        loop.events.accept(peer_text, pid)
        return pid

    def started(  # noqa: PLR0917 - the per-connection path: no keyword dicts
        self,
        pid: int,
        peer_text: str,
        source: int | None,
        taken: float,
        via: object,
        question: socket.socket | None,
    ) -> None:
        """A forker reported the process it forked for a connection (parent.forker):
        what start_child does after its own fork."""
        loop = self.loop
        child = loop.children.add(pid, peer_text, source, self, via)
        self.admission.start_lifetime(child)
        loop.metrics.accepted()
        loop.metrics.forked(child.started - taken)
        loop.events.accept(peer_text, pid)
        if question is not None:
            self.admission.watch_question(pid, question)

    def fork_failed(self, peer_text: str, exc: OSError) -> None:
        name = self.loop.events.fork_failed(exc.errno, peer=peer_text)
        self.loop.metrics.rejected("fork-failed")
        self.acceptor.pause(f"fork:{name}")

    def on_exit(self, ended: Exited, now: float) -> None:
        """The ``end`` line of a reaped connection child; its question channel, if
        still open, closes now."""
        named = self.admission.close_question(ended.pid)
        child = ended.child
        assert child is not None
        metrics = self.loop.metrics
        metrics.exited(ended.exit_code, ended.signal_number)
        metrics.ended(now - child.started)
        self.loop.events.end(
            ended.pid, named or child.peer, ended.status_fields(), now - child.started
        )

    # -- at a stop -----------------------------------------------------------------------

    def drain(self) -> None:
        """Accept what already completed its handshake, into ``pending``.

        Connections waiting in the backlog are accepted until EAGAIN before the
        listener closes: closing it with them queued would reset clients that had
        connected successfully (gunicorn issue 3397). The listener closes at once
        after that, before any fork: a client whose handshake completed while the
        stop forked would be queued, then reset by the close (62 of a 64-client
        flood were). Only a handshake completing in the instant between the last
        accept and the close can still be reset: the kernel offers no way to close a
        listener and keep its queue.
        """
        if self.acceptor.listener is not None:
            while (accepted := self.acceptor.accept()) is not None:
                self.pending.append(accepted)

    def serve_pending(self, has_slot: Callable[[], bool]) -> None:
        while self.pending and has_slot():
            self.fork(*self.pending.popleft())

    def drop_pending(self) -> None:
        """The grace period is over: what is still queued is closed unserved."""
        for conn, _ in self.pending:
            conn.close()
        if self.pending:
            self.loop.log.warning("dropped", queued=len(self.pending))
            self.loop.metrics.rejected("dropped", len(self.pending))
            self.pending.clear()

    def close_pending_in_child(self) -> None:
        for other, _ in self.pending:
            os.close(other.fileno())


class ForkModel:
    """Fork mode: one child per connection, at most ``max_conns`` at once.

    Resource handling: the listener belongs to the caller, but the model closes it
    when a stop begins (so the kernel refuses new clients at once, rather than
    queueing them for a server that is leaving).
    """

    __slots__ = ("acceptor", "children", "conns", "listening", "loop", "max_conns")

    def __init__(self, loop: Loop, listener: Listener, service: Service, max_conns: int) -> None:
        self.loop = loop
        self.children = loop.children
        self.max_conns = max_conns
        self.acceptor = Acceptor(listener, loop.log)
        self.conns = Connections(loop, self.acceptor, service)
        self.listening = False

    @property
    def listener(self) -> Listener | None:
        return self.acceptor.listener

    def start(self) -> None:
        """Nothing to start: the listener is watched from before_wait on (the
        forker, if any, was started by start_forker)."""

    def start_forker(self, recipe: bytes) -> None:
        """Fork connections' processes from a forker started with ``recipe``
        (see parent.forker), from now on. A start-up step: it waits for the forker.

        Raises:
            StartFailed: the forker did not start (the handler did not import there).
        """
        from forkserve.parent.forker import Forkers

        forkers = Forkers(self.loop, self.conns, recipe, needed=self.conns.spawn is None)
        if forkers.needed:  # not while every program is spawned (parent.spawn)
            forkers.start()
        self.conns.forkers = forkers

    def has_slot(self) -> bool:
        forkers = self.conns.forkers
        if forkers is None:
            return len(self.children) < self.max_conns
        return len(self.children) + forkers.in_flight() < self.max_conns and not forkers.blocked()

    def busy(self) -> int:
        """Connections counted against --max-conns: with a forker, from admission."""
        forkers = self.conns.forkers
        return len(self.children) + (forkers.in_flight() if forkers is not None else 0)

    def capacity(self) -> int:
        return self.max_conns

    def queued(self) -> int:
        """Accepted at a stop and waiting for a slot, or handed to a forker and not
        yet started."""
        forkers = self.conns.forkers
        return len(self.conns.pending) + (forkers.in_flight() if forkers is not None else 0)

    def gauges(self) -> dict[str, object]:
        return {"active": self.busy(), "limit": self.capacity()}

    def resize(self, step: int) -> bool:
        return False  # no pool to resize

    def apply_reload(self, plan: ReloadPlan) -> None:
        """A reload's new limit applies from the next accept; children are untouched
        (with a forker, prepare_reload started the new one: the old one retires)."""
        self.conns.use(plan.service)
        if plan.max_conns is not None:
            self.max_conns = plan.max_conns
        if self.conns.forkers is not None and plan.recipe is not None:
            self.conns.forkers.applied(plan.recipe, needed=self.conns.spawn is None)

    def prepare_reload(self, plan: ReloadPlan) -> None:
        """Before a reload applies: a new forker, if it needs one (see Forkers.reload).

        Raises:
            StartFailed: the new forker could not be started: the reload is refused.
        """
        if self.conns.forkers is not None and plan.recipe is not None:
            self.conns.forkers.reload(plan.recipe, plan.changed, spawns(plan.service), plan.hold)

    def before_wait(self) -> None:
        """Watch the listener only while a connection could be taken now; send
        what waits for the forker.

        At --max-conns it leaves the selector and the kernel's backlog is the queue.
        """
        if self.conns.forkers is not None:
            self.conns.forkers.flush()
        listener = self.acceptor.listener
        if listener is None:
            return  # closed, and stop() unregistered it
        want = self.loop.stopping is None and self.has_slot() and not self.acceptor.paused_until
        if want != self.listening:
            if want:
                self.loop.watch(listener, self.on_listener)
            else:
                self.loop.unwatch(listener)
            self.listening = want

    def on_listener(self, mask: int) -> None:
        if not self.listening:
            return  # taken out of the selector earlier in this turn (a stop)
        acceptor, fork = self.acceptor, self.conns.fork
        for _ in range(ACCEPT_BATCH):
            if not self.has_slot() or acceptor.paused_until:
                return
            accepted = acceptor.accept()
            if accepted is None:
                return
            fork(*accepted)

    def deadline(self) -> float | None:
        return (self.acceptor.paused_until or None) if self.acceptor.listener is not None else None

    def on_deadline(self, now: float) -> None:
        self.acceptor.resume_if_due(now)

    def before_exits(self, now: float) -> None:
        """The forkers' reports first: a child a dead forker had reported started
        must be known before it is reaped here."""
        if self.conns.forkers is not None:
            self.conns.forkers.read()

    def after_exits(self, now: float) -> None:
        self.conns.serve_pending(self.has_slot)

    # -- stopping ------------------------------------------------------------------------

    def stop(self, *, drain: bool, shared: bool) -> int:
        """Stop taking connections: accept what is queued (``drain``), close the
        listener, serve what was accepted as slots allow; return how many wait."""
        if self.conns.forkers is not None:
            self.conns.forkers.cancel("the server is stopping")
        if drain:
            self.conns.drain()
        if self.listening and self.acceptor.listener is not None:
            self.loop.unwatch(self.acceptor.listener)
            self.listening = False
        self.acceptor.close()
        self.conns.serve_pending(self.has_slot)
        return len(self.conns.pending)

    def expire(self) -> None:
        self.conns.drop_pending()  # and what waits for a forker, never sent to it:
        if self.conns.forkers is not None:
            self.conns.forkers.drop_waiting()

    def terminate(self) -> None:
        self.children.signal_all(signal.SIGTERM)

    def close_in_child(self) -> None:
        """In a fresh child: the listener and the other queued connections are the
        parent's (closed by number: see Loop.close_shared_in_child)."""
        if self.acceptor.listener is not None:
            os.close(self.acceptor.listener.fileno())
        self.conns.close_pending_in_child()

    def close(self) -> None:
        """The forkers (waited for); the listener is the caller's."""
        if self.conns.forkers is not None:
            self.conns.forkers.close()
