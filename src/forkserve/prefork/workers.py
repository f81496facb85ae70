"""The prefork supervisor's table of workers, and what they report (see prefork.wire).

Each worker reports its changes of state on the status socket shared by all; with
per-source limits or the PROXY protocol it also asks on a channel of its own (see
child.ask), answered here through the parent's admission. A busy worker's connection
counts against its source (the loop's ``SourceCounts``) until the worker reports its
end or is reaped, and is timed for ``--max-lifetime`` from when it was reported.
"""

from __future__ import annotations

import os
import signal
import socket

from forkserve.core.gate import Timers
from forkserve.parent.admission import read_question, send_answer
from forkserve.parent.listeners import ACCEPT_PAUSE
from forkserve.prefork.policy import PoolPolicy, WorkerState
from forkserve.prefork.wire import STATUS_SIZE, decode

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Iterator

    from forkserve.parent.loop import Loop


class WorkerTable:
    """Workers by pid, their question channels, and the status socket.

    Resource handling: owns the status socketpair (workers inherit the write end)
    and the supervisor's end of each worker's channel, closed when it is reaped.
    """

    __slots__ = (
        "admission",
        "channels",
        "children",
        "counts",
        "early",
        "expecting",
        "lifetimes",
        "log",
        "loop",
        "policy",
        "status_r",
        "status_w",
        "workers",
    )

    def __init__(self, loop: Loop, policy: PoolPolicy) -> None:
        self.loop = loop
        self.log = loop.log
        self.children = loop.children
        self.counts = loop.children.counts  # busy workers count against their source
        self.admission = loop.admission
        self.policy = policy
        self.workers: dict[int, WorkerState] = {}
        # Workers a forker is starting (prefork.forked) may report before their
        # STARTED is read: their reports wait here until it is (see reports).
        self.expecting = 0
        self.early: list[tuple[str, int, str]] = []
        self.status_r, self.status_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.status_r.setblocking(False)
        # Per-source limits: each worker's question channel (supervisor's end).
        self.channels: dict[int, socket.socket] = {}
        # --max-lifetime: workers are timed from when they report a connection,
        # keyed (pid, since), never by pid alone (see parent.admission).
        lifetime = self.admission.policy.max_lifetime
        self.lifetimes = Timers(lifetime, self.lifetime_current) if lifetime else None

    def add(self, pid: int, now: float, channel: socket.socket | None) -> None:
        """A new worker (its channel non-blocking from now on)."""
        self.workers[pid] = WorkerState(pid, now)
        if channel is not None:
            channel.setblocking(False)
            self.channels[pid] = channel

    def remove(self, pid: int, now: float, status: dict[str, object]) -> WorkerState:
        """A reaped worker: close its channel; a connection it served ends with it."""
        worker = self.workers.pop(pid)
        self.release_source(worker)
        channel = self.channels.pop(pid, None)
        if channel is not None:
            self.loop.unwatch(channel)
            channel.close()
        if worker.state == "busy":
            self.connection_ended(worker, now, status)
        return worker

    def staying(self) -> int:
        """Workers not asked to leave."""
        return sum(1 for w in self.workers.values() if not w.stopping)

    def answer(self, pid: int, now: float) -> None:
        """A worker asks whether the per-source limits admit its connection, or
        reports a denial (see child.ask). Without PROXY the answer replaces its ``A``
        report; with PROXY it reported ``A`` at accept, and the answer counts the
        connection against the client its header named."""
        channel = self.channels.get(pid)
        if channel is None:
            # Reaped (and its channel closed) by the signals handled earlier in this
            # same turn of the loop: the selector's event predates that.
            return
        question = read_question(channel)
        worker = self.workers.get(pid)
        if not question or worker is None:
            return  # nothing yet, or the worker died: on_exit closes its channel
        self.read_status(now)  # an "A" sent before the question counts first
        source, peer, answer = self.admission.judge(question, now, pid)
        if worker.state == "busy":
            worker.peer = peer  # its end line names the client
        if source is not None:
            worker.source = source
            self.counts.add(source)
            if worker.state != "busy":
                self.mark_busy(worker, now, peer)
        if answer:
            send_answer(channel, answer)

    def mark_busy(self, worker: WorkerState, now: float, peer: str) -> None:
        worker.state, worker.since, worker.peer = "busy", now, peer
        self.loop.metrics.accepted()
        self.loop.events.accept(peer, worker.pid)
        if self.lifetimes is not None:
            self.lifetimes.add((worker.pid, now), now)

    def release_source(self, worker: WorkerState) -> None:
        """The worker's connection ended (or the worker did): its source counts one less."""
        if worker.source is not None:
            self.counts.remove(worker.source)
            worker.source = None

    def expect(self, launching: int) -> None:
        """How many workers a forker is starting now (see ``early``)."""
        self.expecting = launching

    def reports(self) -> Iterator[tuple[str, WorkerState, str]]:
        """The workers' status datagrams waiting now, as (kind, worker, detail),
        after those kept from workers not known then; a worker reaped already is
        skipped, or kept while workers are starting (it may be one). Never blocks."""
        early, self.early = self.early, []
        for kind, pid, detail in early:
            worker = self.workers.get(pid)
            if worker is not None:
                yield kind, worker, detail
            elif self.expecting:
                self.early.append((kind, pid, detail))
        while True:
            try:
                kind, pid, detail = decode(self.status_r.recv(STATUS_SIZE))
            except BlockingIOError:
                return
            worker = self.workers.get(pid)
            if worker is not None:
                yield kind, worker, detail
            elif self.expecting:
                self.early.append((kind, pid, detail))

    def read_status(self, now: float) -> None:
        for kind, worker, detail in self.reports():
            if kind == "A":
                self.mark_busy(worker, now, detail)
            elif kind == "D":
                self.loop.metrics.rejected("deny")  # the worker logged it
                if worker.state == "busy":  # behind PROXY: its end line names the client
                    worker.peer = detail
            elif kind == "P":
                self.log.warning(
                    "accept-paused", pid=worker.pid, error=detail, pause=f"{ACCEPT_PAUSE}s"
                )
            elif kind == "U":
                self.log.notice("accept-resumed", pid=worker.pid, after=detail)
            elif kind in "ER":
                if kind == "E":
                    worker.served += 1
                    self.policy.crash_free()
                    self.connection_ended(worker, now, {"exit": int(detail)})
                worker.state, worker.since, worker.peer = "idle", now, ""

    def connection_ended(self, worker: WorkerState, now: float, status: dict[str, object]) -> None:
        """A busy worker's connection ended (or the worker did): count and log it."""
        self.release_source(worker)
        if self.lifetimes is not None:
            self.lifetimes.discard((worker.pid, worker.since))
        worker.state = "idle"  # counts in active() no more
        self.loop.metrics.ended(now - worker.since)
        self.loop.events.end(worker.pid, worker.peer, status, now - worker.since)

    def deadline(self) -> float | None:
        return self.lifetimes.next_deadline() if self.lifetimes is not None else None

    def on_deadline(self, now: float) -> None:
        if self.lifetimes is not None:
            for key in self.lifetimes.due(now):
                self.end_lifetime(key, now)

    # -- --max-lifetime: workers are timed from when they report a connection ----------

    def lifetime_current(self, key: object) -> bool:
        assert isinstance(key, tuple)
        worker = self.workers.get(key[0])
        return (
            worker is not None
            and worker.state == "busy"
            and worker.since == key[1]
            and not worker.stopping
        )

    def end_lifetime(self, key: object, now: float) -> None:
        """End a worker whose connection reached --max-lifetime: SIGQUIT (it dies by
        SIGTERM), SIGKILL to its process group LIFETIME_KILL_AFTER seconds later."""
        assert isinstance(key, tuple)
        worker = self.workers[key[0]]
        worker.stopping = True  # its exit is not a crash
        after = f"{self.admission.policy.max_lifetime:g}s"
        self.log.info(
            "max-lifetime", pid=worker.pid, peer=worker.peer, after=after, signal="SIGQUIT"
        )
        self.end_worker(worker.pid)
        child = self.children.get(worker.pid)  # the kill is keyed by it, not the pid
        if child is not None:
            self.admission.kill_later(child, now)

    def end_worker(self, pid: int) -> None:
        """End a worker now, as fork mode ends a connection's child.

        SIGTERM would only ask a worker to retire, so the worker itself gets SIGQUIT,
        on which it dies by SIGTERM (see prefork.worker); the rest of its process group (a
        handler's subprocesses) gets SIGTERM, never SIGQUIT, whose default action
        dumps core. SIGKILL to the group follows if anything is left.
        """
        try:
            os.kill(pid, signal.SIGQUIT)
        except ProcessLookupError:
            return  # it just ended; the reaper will see it
        self.children.signal(pid, signal.SIGTERM)

    def close_in_child(self) -> None:
        """In any child: the status socket's read end and the channels are ours."""
        self.status_r.close()
        for channel in self.channels.values():
            channel.close()

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.status_r.close()
        self.status_w.close()
