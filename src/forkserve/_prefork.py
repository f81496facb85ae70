"""Prefork mode's supervisor: a dynamic pool of reusable workers, like Apache's prefork.

The pool keeps between ``min_spare`` and ``max_spare`` idle workers, and at most
``max_workers`` in all (which is also the cap on connections served at once; past it
the kernel's accept queue holds clients). It is event-driven, never polled: workers
report each change of state on a datagram socket (see _worker), exits arrive as
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

Access control (see _worker, _ask): workers apply the rules themselves; with
per-source limits or the PROXY protocol each asks the supervisor on a channel of its
own (behind PROXY once the header named the client), and the supervisor counts a
busy worker's connection against its source until the worker reports its end or is
reaped. ``--max-lifetime`` counts from when a worker reports a connection; at the
limit the worker is ended (SIGQUIT: it dies by SIGTERM, as a fork-mode child would)
and replaced.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Mapping

from forkserve._admission import Policy, read_question, send_answer
from forkserve._children import Exited
from forkserve._forking import fork_child
from forkserve._handler import Service
from forkserve._listen import ACCEPT_PAUSE, Listener
from forkserve._log import Log
from forkserve._supervise import Supervisor
from forkserve._worker import Worker, decode

RETIRE_IDLE = 1.0
MAX_SPAWN_BATCH = 32
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0


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
        self.status_r, self.status_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.status_r.setblocking(False)
        # Per-source limits: each worker's question channel (supervisor's end), and
        # the busy workers' connections by source.
        self.channels: dict[int, socket.socket] = {}
        self.busy_sources: dict[int, int] = {}
        # Workers watch the read end: EOF means the supervisor stops (or died).
        self.alive_r, self.alive_w = os.pipe()

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
        self.maintain(time.monotonic())

    # -- workers ------------------------------------------------------------------

    def spawn(self, now: float) -> None:
        assert self.listener is not None
        ours, theirs = (
            socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            if self.gate.limits_sources or self.policy.proxy
            else (None, None)
        )
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

        try:
            pid = fork_child(worker.run, close_in_worker)
        except OSError as exc:
            self.log.warning("fork-failed", error=os.strerror(exc.errno or 0))
            self.note_crash(now)
            if ours is not None and theirs is not None:
                ours.close()
                theirs.close()
            return
        finally:
            worker.wake_r.close()
            worker.wake_w.close()
        self.workers[pid] = WorkerState(pid, now)
        self.children.add(pid, "worker")
        if ours is not None and theirs is not None:
            theirs.close()
            ours.setblocking(False)
            self.channels[pid] = ours
            self.sel.register(ours, selectors.EVENT_READ, pid)
        self.log.debug("worker-start", pid=pid, workers=len(self.workers))

    def maintain(self, now: float) -> None:
        """Spawn up to ``min_spare`` idle workers; retire idle ones beyond ``max_spare``."""
        if self.stopping is not None:
            return
        spare = self.count("idle") + self.count("starting")
        room = self.max_workers - sum(1 for w in self.workers.values() if not w.stopping)
        if spare < self.min_spare and room > 0 and now >= self.backoff_until:
            for _ in range(min(max(self.min_spare - spare, self.spawn_batch), room)):
                self.spawn(now)
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

    def reconfigure(self, settings: Mapping[str, object]) -> None:
        """A reload: new pool limits, and every worker replaced gracefully.

        Workers run the service and settings they were forked with, so each is
        asked to retire (SIGTERM: an idle one exits now, a busy one after its
        connection) and new ones are forked with the new settings at once.
        """
        for name in ("min_spare", "max_spare", "max_workers", "max_requests"):
            setattr(self, name, int(settings[name]))  # type: ignore[call-overload]
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
        reports a denial (see _ask). Without PROXY the answer replaces its ``A``
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
        for ended in exits:
            worker = self.workers.pop(ended.pid, None)
            if worker is None:
                self.log_child_end(ended, now)  # a connection served at the stop
                continue
            self.release_source(worker)
            channel = self.channels.pop(ended.pid, None)
            if channel is not None:
                self.sel.unregister(channel)
                channel.close()
            if worker.state == "busy":
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
        self.maintain(now)

    # -- stopping --------------------------------------------------------------------

    def stop_listening(self) -> None:
        """Stop taking connections, the way fork mode does.

        Workers share the listening socket, so closing the supervisor's copy would
        not stop it, and a busy worker cannot close its own until its connection
        ends. So, once begin_graceful_stop has accepted what was queued (served by
        fork-mode children), the socket is shut down for every holder at once: new
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
        if keep_status:
            os.close(self.alive_w)
            return
        if self.listener is not None:
            self.listener.close()
        self.status_w.close()
        os.close(self.alive_r)

    # -- --max-lifetime: workers are timed from when they report a connection ----------

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
        try:
            os.kill(worker.pid, signal.SIGQUIT)
        except ProcessLookupError:
            pass  # it just ended; the reaper will see it
        self.lifetime_kills.add(worker.pid, now)

    def terminate_children(self) -> None:
        """Workers get SIGQUIT, on which they die by SIGTERM (see _worker); children
        forked at the stop get SIGTERM: every status reads as in fork mode."""
        for pid in self.children.pids():
            self.children.signal(pid, signal.SIGQUIT if pid in self.workers else signal.SIGTERM)

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.status_r.close()
        self.status_w.close()
        os.close(self.alive_r)
        if self.alive_w >= 0:
            os.close(self.alive_w)
