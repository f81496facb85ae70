"""Prefork mode's process model: a dynamic pool of reusable workers, like Apache's prefork.

The pool keeps between ``min_spare`` and ``max_spare`` idle workers, and at most
``max_workers`` in all (which is also the cap on connections served at once; past it
the kernel's accept queue holds clients). It is event-driven, never polled: workers
report each change of state on a datagram socket (see prefork.wire), exits arrive as
SIGCHLD, and the only timers are the ones a state needs (retiring a surplus idle
worker, waiting out a crash back-off). The decisions are prefork.policy's; this
module acts on them.

Access control (see prefork.worker, child.ask): workers apply the rules themselves; with
per-source limits or the PROXY protocol each asks the supervisor on a channel of its
own (behind PROXY once the header named the client), and the supervisor counts a
busy worker's connection against its source until the worker reports its end or is
reaped. ``--max-lifetime`` counts from when a worker reports a connection; at the
limit the worker is ended (SIGQUIT: it dies by SIGTERM, as a fork-mode child would)
and replaced.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time

from forkserve._errors import EXIT_TEMPORARY
from forkserve.child.handler import Service
from forkserve.parent.children import Exited
from forkserve.parent.forkerstart import StartFailed
from forkserve.parent.forkmodel import Acceptor, Connections
from forkserve.parent.listeners import Listener
from forkserve.prefork.policy import SUPERVISOR_SETTINGS, PoolPolicy, WorkerState
from forkserve.prefork.spawner import Spawner
from forkserve.prefork.worker import Worker
from forkserve.prefork.workers import WorkerTable

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from forkserve.config.reload import ReloadPlan
    from forkserve.parent.loop import Loop


class Pool:
    """The prefork supervisor's process model. See the module docstring."""

    __slots__ = (
        "acceptor",
        "admission",
        "alive_r",
        "alive_w",
        "asking",
        "children",
        "conns",
        "log",
        "loop",
        "old_alive",
        "policy",
        "probe",
        "service",
        "spawner",
        "table",
        "waited",
        "workers",
    )

    def __init__(
        self, loop: Loop, listener: Listener, service: Service, policy: PoolPolicy
    ) -> None:
        self.loop = loop
        self.log = loop.log
        self.children = loop.children
        self.admission = loop.admission
        self.service = service
        self.policy = policy
        self.acceptor = Acceptor(listener, loop.log)  # only at a stop (see stop)
        self.conns = Connections(loop, self.acceptor, service)  # served at a stop
        self.table = WorkerTable(loop, policy)
        self.workers = self.table.workers  # read here; written by the table alone
        self.asking = self.admission.policy.gate.limits_sources  # whether workers get one
        # Workers watch the read end: EOF means the supervisor stops (or died).
        self.alive_r, self.alive_w = os.pipe()
        self.old_alive: tuple[int, int] | None = None  # a reload's, until it applies
        # Whether a client waits in the listener's queue (see hand_on_wakeup): a
        # poll(2) set, which holds no descriptor of its own.
        self.probe = select.poll()
        self.waited = False  # a worker that left was waiting on the listener
        self.spawner = Spawner(self)  # forks workers, or has a forker fork them

    def start_forker(self, recipe: bytes) -> None:
        """Workers forked by a forker from now on (see prefork.forked)."""
        self.spawner.start_forker(recipe)

    @property
    def listener(self) -> Listener | None:
        return self.acceptor.listener

    def in_use(self) -> int:
        """Connections being served: by busy workers, and by children forked at a stop."""
        busy = sum(1 for w in self.workers.values() if w.state == "busy")
        return busy + len(self.children) - len(self.workers)

    def has_slot(self) -> bool:
        return self.in_use() < self.policy.max_workers

    def busy(self) -> int:
        return self.in_use()

    def capacity(self) -> int:
        return self.policy.max_workers

    def queued(self) -> int:
        return len(self.conns.pending)

    def gauges(self) -> dict[str, object]:
        workers = {"busy": 0, "idle": 0, "starting": 0}
        for worker in self.workers.values():
            workers[worker.state] += 1
        return {"active": self.busy(), "limit": self.capacity(), "workers": workers}

    def start(self) -> None:
        self.loop.watch(self.table.status_r, self.on_status)
        assert self.listener is not None
        self.probe.register(self.listener.fileno(), select.POLLIN)
        self.maintain(time.monotonic())

    def before_wait(self) -> None:
        """Workers, not the supervisor, wait on the listener; a forker's items go."""
        if self.spawner.forkers is not None:
            self.spawner.forkers.flush()

    # -- workers ------------------------------------------------------------------

    def spawn(self, now: float) -> bool:
        """Start one worker (see prefork.spawner); False if out of a resource."""
        return self.spawner.spawn(now)

    def fork_worker(self) -> tuple[int, socket.socket | None]:
        """Fork a worker here (no forker): see Spawner.fork_worker."""
        return self.spawner.fork_worker()

    def make_worker(self, channel: socket.socket | None) -> Worker:
        """A worker to fork, with the settings in force now (``channel``: its end
        of the question channel, if it asks)."""
        assert self.listener is not None
        return Worker(
            self.listener.sock,
            self.table.status_w,
            self.alive_r,
            self.service,
            self.policy.max_requests,
            policy=self.admission.policy,
            log=self.log,
            channel=channel,
        )

    def maintain(self, now: float) -> int:
        """Spawn up to ``min_spare`` idle workers; retire idle ones beyond ``max_spare``.

        Returns:
            How many workers it forked.
        """
        if self.loop.stopping is not None:
            return 0
        forked = 0
        for _ in range(self.policy.to_spawn(self.states(), now)):
            if not self.spawn(now):
                break  # out of a resource: retried after the back-off
            forked += 1
        for worker in self.policy.to_retire(list(self.workers.values()), now):
            self.retire(worker, "surplus")
        return forked

    def states(self) -> list[WorkerState]:
        """Every worker, and (forked by a forker) those launching, as starting."""
        launching = self.spawner.forkers.states() if self.spawner.forkers is not None else []
        return [*self.workers.values(), *launching]

    def retire(self, worker: WorkerState, reason: str) -> None:
        worker.stopping = True
        self.log.debug("worker-retire", pid=worker.pid, reason=reason)
        self.children.signal_process(worker.pid, signal.SIGTERM)

    def deadline(self) -> float | None:
        if self.loop.stopping is not None:
            return None
        # A forker that failed to start again is retried after a pause (parent.forker).
        retry = self.acceptor.paused_until or None
        due = (self.policy.deadline(self.states()), self.table.deadline(), retry)
        return min((when for when in due if when is not None), default=None)

    def on_deadline(self, now: float) -> None:
        self.acceptor.resume_if_due(now)
        self.maintain(now)
        self.table.on_deadline(now)

    def resize(self, step: int) -> bool:
        """SIGTTIN grows the spare range by one worker, SIGTTOU shrinks it."""
        self.policy.resize(step)
        self.log.notice("pool", min_spare=self.policy.min_spare, max_spare=self.policy.max_spare)
        self.maintain(time.monotonic())
        return True

    def prepare_reload(self, plan: ReloadPlan) -> None:
        """Workers forked by a forker: a new one for the new settings, when the
        workers are replaced (see WorkerForkers.reload_workers and apply_reload).

        Raises:
            StartFailed: the new forker could not be started: the reload is refused.
        """
        forkers = self.spawner.forkers
        replaced = plan.changed - SUPERVISOR_SETTINGS or (
            plan.policy.gate.limits_sources != self.asking
        )
        if forkers is not None and plan.recipe is not None and replaced:
            forkers.reload_workers(plan, self)

    def new_alive_pipe(self) -> tuple[int, int]:
        """The next generation of workers' alive pipe (their forker gets its read
        end); returns the old one, which apply_reload closes: the old workers see
        its end of file at once, before the reload is logged, and none of them
        accepts with the old settings from then on (their SIGTERM, through their
        forker, comes a moment later).

        Raises:
            StartFailed: pipe(2) failed (EMFILE): the reload is refused.
        """
        try:
            fresh = os.pipe()
        except OSError as exc:
            raise StartFailed(EXIT_TEMPORARY, f"cannot start the forker: {exc}") from None
        old = (self.alive_r, self.alive_w)
        self.alive_r, self.alive_w = fresh
        return old

    def restore_alive_pipe(self, old: tuple[int, int]) -> None:
        os.close(self.alive_r)
        os.close(self.alive_w)
        self.alive_r, self.alive_w = old

    def apply_reload(self, plan: ReloadPlan) -> None:
        """A reload: new pool limits; workers replaced if they hold what changed.

        Workers run the service and settings they were forked with. When one of
        those changed (anything but SUPERVISOR_SETTINGS; per-source limits turned
        on or off, which decides whether a worker has a question channel; the TLS
        certificate read again), each is asked to retire (SIGTERM: an idle one
        exits now, a busy one after its connection) and new ones are forked with
        the new settings at once. Otherwise the pool is left as it is.
        """
        self.service = plan.service
        self.conns.use(plan.service)
        if self.spawner.forkers is not None and plan.recipe is not None:
            self.spawner.forkers.applied(plan.recipe, needed=True)  # what a respawn starts
        if plan.pool is not None:
            self.policy.configure(plan.pool)
        asking = self.admission.policy.gate.limits_sources
        if plan.changed - SUPERVISOR_SETTINGS or asking != self.asking:
            self.asking = asking
            if self.spawner.forkers is not None:
                self.spawner.forkers.outdate()
            if self.old_alive is not None:  # the old workers see its end now
                os.close(self.old_alive[0])
                os.close(self.old_alive[1])
                self.old_alive = None
            for worker in list(self.workers.values()):
                if not worker.stopping:
                    self.retire(worker, "reload")
        self.maintain(time.monotonic())

    def on_status(self, mask: int) -> None:
        forkers = self.spawner.forkers
        if forkers is not None and forkers.launching:  # their STARTED before their reports
            forkers.read()
        self.table.read_status(time.monotonic())
        self.maintain(time.monotonic())

    def on_channel(self, pid: int) -> None:
        self.table.answer(pid, time.monotonic())
        self.maintain(time.monotonic())

    def before_exits(self, now: float) -> None:
        self.table.read_status(now)  # an "E" sent just before exiting must count first

    def on_exit(self, ended: Exited, now: float) -> None:
        """A worker was reaped (or its forker reported its exit): close its channel,
        log why it left."""
        if ended.child is not None and ended.child.via is not None:
            self.before_exits(now)  # reported by its forker: its last "E" counts first
        worker = self.table.remove(ended.pid, now, ended.status_fields())
        self.waited = self.waited or self.policy.was_waiting(worker)
        reason = self.policy.exit_reason(worker, ended.exit_code, self.loop.stopping is not None)
        if reason == "crashed":
            self.policy.note_crash(now)
        self.loop.metrics.exited(ended.exit_code, ended.signal_number)
        log = self.log.warning if reason == "crashed" else self.log.info
        fields = ended.status_fields()
        log("worker-exit", pid=ended.pid, **fields, served=worker.served, reason=reason)

    def after_exits(self, now: float) -> None:
        self.conns.serve_pending(self.has_slot)
        waited, self.waited = self.waited, False
        if not self.maintain(now) and waited:
            self.hand_on_wakeup(now)

    def hand_on_wakeup(self, now: float) -> None:
        """A client may be stranded: fork a worker if one is queued.

        EPOLLEXCLUSIVE wakes one waiting worker per new connection. A worker woken
        for one that then leaves without accepting (SIGTERM to retire, landing in
        the same poll) takes the wakeup with it: the other idle workers sleep on,
        and the client waits until the next one arrives (seen in 11 of 20 tries).
        No call wakes them again, but a new worker's EPOLL_CTL_ADD polls the
        listener, so a worker forked now finds the client at once. The probe is a
        poll(2) with no timeout, which wakes no one.
        """
        if self.loop.stopping is not None or not self.probe.poll(0):
            return
        if self.policy.max_workers > self.table.staying():
            self.log.debug("wakeup-handed-on", workers=len(self.workers))
            self.spawn(now)

    # -- stopping --------------------------------------------------------------------

    def stop(self, *, drain: bool, shared: bool) -> int:
        """Stop taking connections, the way fork mode does; return how many wait.

        Workers share the listening socket, so closing the supervisor's copy would
        not stop it, and a busy worker cannot close its own until its connection
        ends. So, once what was queued is accepted (``drain``: served by fork-mode
        children, forked after this), the socket is shut down for every holder at
        once: new clients are refused from then on, and each worker's accept fails
        with EINVAL. Closing the alive pipe tells idle workers to go; busy ones go
        once their connection ends.

        Never for a socket that is not ours alone: one systemd holds (shutting it
        down would stop it for the next start too), or one a new master shares
        during an upgrade (``shared``). Workers then see only the alive pipe's end
        of file.
        """
        if self.spawner.forkers is not None:
            self.spawner.forkers.cancel("the server is stopping")
        if drain:
            self.conns.drain()
        listener = self.listener
        if listener is not None and listener.owned and not shared:
            listener.sock.shutdown(socket.SHUT_RD)
        self.acceptor.close()
        if self.alive_w >= 0:
            os.close(self.alive_w)
            self.alive_w = -1
        for worker in self.workers.values():
            worker.stopping = True
        self.conns.serve_pending(self.has_slot)
        return len(self.conns.pending)

    def expire(self) -> None:
        self.conns.drop_pending()

    def close_in_child(self, keep_status: bool = False) -> None:
        """Undo the supervisor's set-up in a child: one forked for a connection at a
        stop, or (``keep_status``) a new worker, which keeps the status socket, the
        alive pipe's read end and the listener."""
        self.table.close_in_child()
        for other, _ in self.conns.pending:
            other.close()
        # The alive pipe's write end is the supervisor's alone, in every child: a
        # copy held by a connection's child would keep idle workers from seeing its
        # end of file at a stop, and they would go on accepting (from a socket the
        # stop cannot shut down: socket activation, an upgrade).
        if self.alive_w >= 0:
            os.close(self.alive_w)
        if keep_status:
            return
        if self.listener is not None:
            self.listener.close()
        self.table.status_w.close()
        os.close(self.alive_r)

    # -- --max-lifetime: workers are timed from when they report a connection ----------

    def terminate(self) -> None:
        """Workers end as end_worker says; children forked at the stop get SIGTERM:
        every status reads as in fork mode."""
        for pid in self.children.pids():
            if pid in self.workers:
                self.table.end_worker(pid)
            else:
                self.children.signal(pid, signal.SIGTERM)

    def close(self) -> None:
        if self.spawner.forkers is not None:
            self.spawner.forkers.close()
        self.table.close()
        os.close(self.alive_r)
        if self.alive_w >= 0:
            os.close(self.alive_w)
