"""Prefork mode's supervisor: a dynamic pool of reusable workers, like Apache's prefork.

The pool keeps between ``min_spare`` and ``max_spare`` idle workers, and at most
``max_workers`` in all (which is also the cap on connections served at once; past it
the kernel's accept queue holds clients). It is event-driven, never polled: workers
report each change of state on a datagram socket (see prefork.worker), exits arrive as
SIGCHLD, and the only timers are the ones a state needs (retiring a surplus idle
worker, waiting out a crash back-off).

- Spawning: when idle workers fall below ``min_spare``, spawn the shortfall at once;
  while shortfalls follow one another, each batch doubles (1, 2, 4 ... 32), as Apache
  does, so a burst is met quickly without a fork storm in the steady state.
- Retiring: an idle worker beyond ``max_spare`` retires once it has been idle for
  RETIRE_IDLE seconds, so a pool does not shrink and regrow between two bursts.
- Recycling: a worker exits after ``max_requests`` connections and is replaced.
- Crashes: a worker that dies unasked is logged with its status and replaced after a
  back-off that doubles with each crash in a row (0.1 s up to 10 s) and resets when a
  worker completes a connection.

Access control (see prefork.worker, child.ask): workers apply the rules themselves; with
per-source limits or the PROXY protocol each asks the supervisor on a channel of its
own (behind PROXY once the header named the client), and the supervisor counts a
busy worker's connection against its source until the worker reports its end or is
reaped. ``--max-lifetime`` counts from when a worker reports a connection; at the
limit the worker is ended (SIGQUIT: it dies by SIGTERM, as a fork-mode child would)
and replaced.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import signal
import socket
import time
from collections.abc import Callable

from forkserve._log import Log
from forkserve.child.handler import Service
from forkserve.core.errnames import errno_name
from forkserve.core.gate import Policy
from forkserve.parent.admission import read_question, send_answer
from forkserve.parent.children import Exited
from forkserve.parent.fork import fork_child
from forkserve.parent.listeners import ACCEPT_PAUSE, CAPACITY_ERRNOS, Listener
from forkserve.parent.loop import Supervisor
from forkserve.prefork.worker import Worker, decode

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from forkserve.config.reload import ReloadPlan

RETIRE_IDLE = 1.0
MAX_SPAWN_BATCH = 32
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
# What a spawn may run out of: descriptors (its channel and wakeup pairs), memory,
# processes (fork's EAGAIN). A failed spawn is retried after the back-off.
SPAWN_ERRNOS = CAPACITY_ERRNOS | {errno.EAGAIN}
# Reloadable settings only the supervisor reads: a reload that changes nothing else
# keeps the workers. Each worker holds the rest: the handler's prelude (banner, time
# and resource limits), the access rules and --reject-message, its --max-requests,
# the log's level and format, the TLS context. --per-ip and --rate are counted by the
# supervisor, but turning them on or off gives workers a channel or takes it away.
SUPERVISOR_SETTINGS = frozenset(
    {"grace", "upgrade-timeout", "min-spare", "max-spare", "max-workers", "per-ip", "rate"}
)


class WorkerState:
    """The supervisor's view of one worker."""

    __slots__ = ("peer", "pid", "served", "since", "source", "state", "stopping")

    def __init__(self, pid: int, now: float) -> None:
        self.pid = pid
        self.state = "starting"  # "starting", "idle" or "busy"
        self.since = now  # when it entered that state
        self.peer = ""
        self.served = 0
        self.stopping = False  # asked to retire or to stop
        self.source: int | None = None  # counted against while busy (per-source limits)


class PreforkLoop(Supervisor):
    """The prefork supervisor. See the module docstring for the pool's rules."""

    def __init__(
        self,
        listener: Listener,
        service: Service,
        log: Log,
        *,
        min_spare: int,
        max_spare: int,
        max_workers: int,
        max_requests: int,
        grace: float,
        ready: Callable[[], None] | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(listener, service, log, grace=grace, ready=ready, policy=policy)
        self.min_spare = min_spare
        self.max_spare = max_spare
        self.max_workers = max_workers
        self.max_requests = max_requests
        self.workers: dict[int, WorkerState] = {}
        self.spawn_batch = 1
        self.crashes = 0
        self.backoff_until = 0.0
        self.spawn_burst: tuple[str, int] | None = None  # (errno name, failures)
        self.status_r, self.status_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.status_r.setblocking(False)
        # Per-source limits: each worker's question channel (supervisor's end), and
        # the busy workers' connections by source.
        self.channels: dict[int, socket.socket] = {}
        self.asking = self.gate.limits_sources  # whether workers are forked with one
        self.busy_sources: dict[int, int] = {}
        # Workers watch the read end: EOF means the supervisor stops (or died).
        self.alive_r, self.alive_w = os.pipe()
        # Whether a client waits in the listener's queue (see hand_on_wakeup): a
        # poll(2) set, which holds no descriptor of its own.
        self.probe = select.poll()

    def count(self, state: str) -> int:
        return sum(1 for w in self.workers.values() if w.state == state and not w.stopping)

    def in_use(self) -> int:
        """Connections being served: by busy workers, and by children forked at a stop."""
        busy = sum(1 for w in self.workers.values() if w.state == "busy")
        return busy + len(self.children) - len(self.workers)

    def has_slot(self) -> bool:
        return self.in_use() < self.max_workers

    def busy(self) -> int:
        return self.in_use()

    def capacity(self) -> int:
        return self.max_workers

    def gauges(self) -> dict[str, object]:
        workers = {"busy": 0, "idle": 0, "starting": 0}
        for worker in self.workers.values():
            workers[worker.state] += 1
        return {**super().gauges(), "workers": workers}

    def start(self) -> None:
        self.sel.register(self.status_r, selectors.EVENT_READ)
        assert self.listener is not None
        self.probe.register(self.listener.fileno(), select.POLLIN)
        self.maintain(time.monotonic())

    # -- workers ------------------------------------------------------------------

    def spawn(self, now: float) -> bool:
        """Fork one worker; False (logged once per burst, backed off) if out of a resource.

        Error handling: everything the supervisor allocates for a worker (its question
        channel, the wakeup pair it is forked with, the fork itself) can fail for lack
        of descriptors, memory or processes (EMFILE, ENFILE, ENOBUFS, ENOMEM,
        EAGAIN). Each is a failed spawn: whatever was allocated is closed again, the
        pool serves with the workers it has, and maintain() retries after the crash
        back-off. Any other errno is a bug and is raised.
        """
        try:
            pid, ours = self.fork_worker()
        except OSError as exc:
            if exc.errno not in SPAWN_ERRNOS:
                raise
            self.spawn_failed(errno_name(exc.errno), now)
            return False
        if self.spawn_burst is not None:
            name, failures = self.spawn_burst
            self.log.notice("spawn-resumed", after=name, failures=failures)
            self.spawn_burst = None
            self.crashes = 0  # the back-off was the shortage's, and it is over
        self.workers[pid] = WorkerState(pid, now)
        self.children.add(pid, "worker")
        if ours is not None:
            ours.setblocking(False)
            self.channels[pid] = ours
            self.sel.register(ours, selectors.EVENT_READ, pid)
        self.log.debug("worker-start", pid=pid, workers=len(self.workers))
        return True

    def fork_worker(self) -> tuple[int, socket.socket | None]:
        """Allocate a worker's descriptors and fork it: ``(pid, channel or None)``.

        Raises:
            OSError: socketpair(2) or fork(2) failed; nothing is left open.
        """
        assert self.listener is not None
        ours = theirs = None
        worker = None
        try:
            if self.gate.limits_sources or self.policy.proxy:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            worker = Worker(
                self.listener.sock,
                self.status_w,
                self.alive_r,
                self.service,
                self.max_requests,
                policy=self.policy,
                log=self.log,
                channel=theirs,
            )

            def close_in_worker() -> None:
                self.close_in_child(keep_status=True)
                if ours is not None:
                    ours.close()
                worker.install_signals()

            pid = fork_child(worker.run, close_in_worker)
        except OSError:
            if ours is not None:
                ours.close()
            raise
        finally:
            if theirs is not None:
                theirs.close()
            if worker is not None:
                worker.wake_r.close()
                worker.wake_w.close()
        return pid, ours

    def spawn_failed(self, name: str, now: float) -> None:
        """Log the first failed spawn of a burst; count the others; back off."""
        if self.spawn_burst is None:
            self.log.warning("fork-failed", error=name, workers=len(self.workers))
            self.spawn_burst = (name, 0)
        self.spawn_burst = (self.spawn_burst[0], self.spawn_burst[1] + 1)
        self.note_crash(now)

    def maintain(self, now: float) -> int:
        """Spawn up to ``min_spare`` idle workers; retire idle ones beyond ``max_spare``.

        Returns:
            How many workers it forked.
        """
        if self.stopping is not None:
            return 0
        spare = self.count("idle") + self.count("starting")
        room = self.max_workers - sum(1 for w in self.workers.values() if not w.stopping)
        forked = 0
        if spare < self.min_spare and room > 0 and now >= self.backoff_until:
            for _ in range(min(max(self.min_spare - spare, self.spawn_batch), room)):
                if not self.spawn(now):
                    break  # out of a resource: retried after the back-off
                forked += 1
            self.spawn_batch = min(self.spawn_batch * 2, MAX_SPAWN_BATCH)
        elif spare >= self.min_spare:
            self.spawn_batch = 1
        surplus = self.count("idle") - self.max_spare
        idle = sorted(
            (w for w in self.workers.values() if w.state == "idle" and not w.stopping),
            key=lambda w: w.since,
        )
        for worker in idle[: max(0, surplus)]:
            if now - worker.since >= RETIRE_IDLE:
                self.retire(worker, "surplus")
        return forked

    def after_reload(self) -> None:
        """Workers hold what they were forked with: retire each (a busy one after its
        connection); maintain() forks their replacements from the reloaded parent."""
        for worker in list(self.workers.values()):
            if not worker.stopping:
                self.retire(worker, "reload")

    def retire(self, worker: WorkerState, reason: str) -> None:
        worker.stopping = True
        self.log.debug("worker-retire", pid=worker.pid, reason=reason)
        os.kill(worker.pid, signal.SIGTERM)

    def deadlines(self) -> tuple[float | None, ...]:
        if self.stopping is not None:
            return ()
        retire_at = None
        idle = [w.since for w in self.workers.values() if w.state == "idle" and not w.stopping]
        if len(idle) > self.max_spare:
            retire_at = min(idle) + RETIRE_IDLE
        spare = self.count("idle") + self.count("starting")
        backoff = self.backoff_until if spare < self.min_spare and self.backoff_until else None
        return retire_at, backoff

    def on_deadlines(self, now: float) -> None:
        self.maintain(now)

    def note_crash(self, now: float) -> None:
        self.backoff_until = now + min(BACKOFF_FIRST * 2**self.crashes, BACKOFF_MAX)
        self.crashes += 1

    def on_pool_signal(self, number: int) -> None:
        """SIGTTIN grows the spare range by one worker, SIGTTOU shrinks it."""
        step = 1 if number == signal.SIGTTIN else -1
        self.min_spare = max(1, self.min_spare + step)
        self.max_spare = max(self.min_spare, self.max_spare + step)
        self.log.notice("pool", min_spare=self.min_spare, max_spare=self.max_spare)
        self.maintain(time.monotonic())

    def reconfigure(self, plan: ReloadPlan) -> None:
        """A reload: new pool limits; workers replaced if they hold what changed.

        Workers run the service and settings they were forked with. When one of
        those changed (anything but SUPERVISOR_SETTINGS; per-source limits turned
        on or off, which decides whether a worker has a question channel; the TLS
        certificate read again), each is asked to retire (SIGTERM: an idle one
        exits now, a busy one after its connection) and new ones are forked with
        the new settings at once. Otherwise the pool is left as it is.
        """
        if plan.pool is not None:
            self.min_spare = plan.pool["min_spare"]
            self.max_spare = plan.pool["max_spare"]
            self.max_workers = plan.pool["max_workers"]
            self.max_requests = plan.pool["max_requests"]
        asking = self.gate.limits_sources
        if plan.changed - SUPERVISOR_SETTINGS or asking != self.asking:
            self.asking = asking
            self.after_reload()
        self.maintain(time.monotonic())

    # -- what workers report ----------------------------------------------------------

    def on_ready(self, key: selectors.SelectorKey, mask: int) -> None:
        if key.fileobj is self.status_r:
            self.read_status(time.monotonic())
            self.maintain(time.monotonic())
        elif isinstance(key.data, int):
            self.answer(key.data, time.monotonic())
            self.maintain(time.monotonic())

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
            return  # nothing yet, or the worker died: on_exits closes its channel
        self.read_status(now)  # an "A" sent before the question counts first
        source, peer, answer = self.judge(question, now, pid)
        if worker.state == "busy":
            worker.peer = peer  # its end line names the client
        if source is not None:
            self.count_source(worker, source)
            if worker.state != "busy":
                self.mark_busy(worker, now, peer)
        if answer:
            send_answer(channel, answer)

    def mark_busy(self, worker: WorkerState, now: float, peer: str) -> None:
        worker.state, worker.since, worker.peer = "busy", now, peer
        self.metrics.accepted()
        self.log.info("accept", peer=peer, pid=worker.pid, conns=self.active())
        if self.lifetimes is not None:
            self.lifetimes.add((worker.pid, now), now)

    def count_source(self, worker: WorkerState, source: int) -> None:
        worker.source = source
        self.busy_sources[source] = self.busy_sources.get(source, 0) + 1

    def release_source(self, worker: WorkerState) -> None:
        """The worker's connection ended (or the worker did): its source counts one less."""
        if worker.source is None:
            return
        left = self.busy_sources[worker.source] - 1
        if left:
            self.busy_sources[worker.source] = left
        else:
            del self.busy_sources[worker.source]
        worker.source = None

    def open_from(self, source: int) -> int:
        """Busy workers' connections from ``source``, and children forked at a stop."""
        return self.busy_sources.get(source, 0) + self.children.open_from(source)

    def read_status(self, now: float) -> None:
        while True:
            try:
                kind, pid, detail = decode(self.status_r.recv(4096))
            except BlockingIOError:
                return
            worker = self.workers.get(pid)
            if worker is None:
                continue  # already reaped
            if kind == "A":
                self.mark_busy(worker, now, detail)
            elif kind == "D":
                self.metrics.rejected("deny")  # the worker logged it
                if worker.state == "busy":  # behind PROXY: its end line names the client
                    worker.peer = detail
            elif kind == "P":
                self.log.warning("accept-paused", pid=pid, error=detail, pause=f"{ACCEPT_PAUSE}s")
            elif kind == "U":
                self.log.notice("accept-resumed", pid=pid, after=detail)
            elif kind in "ER":
                if kind == "E":
                    worker.served += 1
                    self.crashes = 0
                    self.release_source(worker)
                    self.forget_lifetime(worker)
                    self.log_end(worker, now, exit=int(detail))
                worker.state, worker.since, worker.peer = "idle", now, ""

    def log_end(self, worker: WorkerState, now: float, **status: object) -> None:
        worker.state = "idle"  # counts in active() no more
        self.metrics.ended(now - worker.since)
        self.log.info(
            "end",
            pid=worker.pid,
            peer=worker.peer,
            **status,
            duration=f"{now - worker.since:.3f}s",
            conns=self.active(),
        )

    def on_exits(self, exits: list[Exited]) -> None:
        now = time.monotonic()
        self.read_status(now)  # an "E" sent just before exiting must count first
        waited = False  # whether a worker that left was waiting on the listener
        for ended in exits:
            worker = self.workers.pop(ended.pid, None)
            if worker is None:
                self.log_child_end(ended, now)  # a connection served at the stop
                continue
            waited = waited or self.was_waiting(worker)
            self.release_source(worker)
            channel = self.channels.pop(ended.pid, None)
            if channel is not None:
                self.sel.unregister(channel)
                channel.close()
            if worker.state == "busy":
                self.forget_lifetime(worker)
                self.log_end(worker, now, **ended.status_fields())
            if worker.stopping or self.stopping is not None:
                reason = "stopped"
            elif ended.exit_code == 0:
                reason = "max-requests"  # the one way a worker leaves cleanly unasked
            else:
                reason = "crashed"
                self.note_crash(now)
            self.metrics.exited(ended.exit_code, ended.signal_number)
            log = self.log.warning if reason == "crashed" else self.log.info
            fields = ended.status_fields()
            log("worker-exit", pid=ended.pid, **fields, served=worker.served, reason=reason)
        self.serve_pending()
        if not self.maintain(now) and waited:
            self.hand_on_wakeup(now)

    def was_waiting(self, worker: WorkerState) -> bool:
        """Whether a worker that left may have been waiting in epoll on the listener:
        idle, and not leaving because it reached --max-requests (it then exits right
        after its connection, without waiting again)."""
        done = self.max_requests and worker.served >= self.max_requests
        return worker.state == "idle" and not done

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
        if self.stopping is not None or not self.probe.poll(0):
            return
        if self.max_workers > sum(1 for w in self.workers.values() if not w.stopping):
            self.log.debug("wakeup-handed-on", workers=len(self.workers))
            self.spawn(now)

    # -- stopping --------------------------------------------------------------------

    def stop_listening(self) -> None:
        """Stop taking connections, the way fork mode does.

        Workers share the listening socket, so closing the supervisor's copy would
        not stop it, and a busy worker cannot close its own until its connection
        ends. So, once begin_graceful_stop has accepted what was queued (served by
        fork-mode children, forked after this), the socket is shut down for every
        holder at once: new
        clients are refused from then on, and each worker's accept fails with
        EINVAL. Closing the alive pipe tells idle workers to go; busy ones go once
        their connection ends.

        Never for a socket that is not ours alone: one systemd holds (shutting it
        down would stop it for the next start too), or one a new master shares
        during an upgrade. Workers then see only the alive pipe's end of file.
        """
        listener = self.listener
        if listener is not None and listener.owned and self.upgrade is None:
            listener.sock.shutdown(socket.SHUT_RD)
        super().stop_listening()
        if self.alive_w >= 0:
            os.close(self.alive_w)
            self.alive_w = -1
        for worker in self.workers.values():
            worker.stopping = True

    def close_in_child(self, keep_status: bool = False) -> None:
        """Undo the supervisor's set-up in a child: one forked for a connection at a
        stop, or (``keep_status``) a new worker, which keeps the status socket, the
        alive pipe's read end and the listener."""
        self.sel.close()
        if self.sigs is not None:
            self.sigs.close_in_child()
        self.status_r.close()
        for channel in self.channels.values():
            channel.close()
        for other, _ in self.pending:
            other.close()
        self.close_questions_in_child()
        self.close_extras_in_child()
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
        self.status_w.close()
        os.close(self.alive_r)

    # -- --max-lifetime: workers are timed from when they report a connection ----------

    def forget_lifetime(self, worker: WorkerState) -> None:
        """The worker's connection ended: drop its timer (keyed ``(pid, since)``)."""
        if self.lifetimes is not None:
            self.lifetimes.discard((worker.pid, worker.since))

    def lifetime_current(self, key: object) -> bool:
        if not isinstance(key, tuple):
            return super().lifetime_current(key)  # a child forked at a stop
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
        if not isinstance(key, tuple):
            super().end_lifetime(key, now)
            return
        worker = self.workers[key[0]]
        worker.stopping = True  # its exit is not a crash
        after = f"{self.policy.max_lifetime:g}s"
        self.log.info(
            "max-lifetime", pid=worker.pid, peer=worker.peer, after=after, signal="SIGQUIT"
        )
        self.end_worker(worker.pid)
        child = self.children.get(worker.pid)  # the kill is keyed by it, not the pid
        if child is not None:
            self.lifetime_kills.add(child, now)

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

    def terminate_children(self) -> None:
        """Workers end as end_worker says; children forked at the stop get SIGTERM:
        every status reads as in fork mode."""
        for pid in self.children.pids():
            if pid in self.workers:
                self.end_worker(pid)
            else:
                self.children.signal(pid, signal.SIGTERM)

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.status_r.close()
        self.status_w.close()
        os.close(self.alive_r)
        if self.alive_w >= 0:
            os.close(self.alive_w)
