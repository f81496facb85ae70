"""Async mode's supervisor: prefork's pool with a fixed number of event-loop workers.

The pool is prefork.pool's ``Pool``, reused for what is the same: forking a worker
with its descriptors (``spawn``, ``fork_worker``), the back-off after a crash or a
failed spawn and the replacement of a worker that left (``PoolPolicy``, with
``min_spare = max_spare = max_workers = --workers``: every worker counts as a
spare, since an async worker always takes more connections), the stop (the queue
served, the listener shut down, the alive pipe closed), the reload (workers
retired and replaced), ``--max-lifetime``'s and the per-source limits' channels,
and the status datagrams (prefork.wire). What differs is counting: a worker holds
many connections, so the supervisor keeps one entry per connection, keyed by the
worker's pid and the worker's number for it, from its ``A`` report to its ``E``
report, or to the worker's death, which ends them all with the worker's status.

The supervisor never runs an event loop or a thread and never blocks: it reads the
reports from its selector loop like prefork's, and the eventfd it writes (the
tokens of ``--max-conns``: see asyncmode.worker) never blocks below its maximum.
"""

from __future__ import annotations

import collections
import errno
import mmap
import os
import time

from forkserve.asyncmode.worker import AsyncWorker
from forkserve.parent.admission import read_question, send_answer
from forkserve.parent.children import describe_signal
from forkserve.parent.listeners import ACCEPT_PAUSE
from forkserve.prefork.policy import SUPERVISOR_SETTINGS, PoolPolicy
from forkserve.prefork.pool import Pool

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    import socket

    from forkserve.asyncmode.service import AsyncService
    from forkserve.child.handler import Service
    from forkserve.config.reload import ReloadPlan
    from forkserve.config.values import Settings
    from forkserve.parent.children import Exited
    from forkserve.parent.listeners import Listener
    from forkserve.parent.loop import Loop
    from forkserve.prefork.policy import WorkerState


# The shared page's generation counter: 8 bytes.
EPOCH_SIZE = 8
# The tokens each worker holds, a signed 8-byte count per worker slot in a shared
# mapping (pages are only touched as slots are used): more slots than workers ever
# live at once (--workers, plus those a reload retires while they finish).
HELD_SLOTS = 4096


class Open:
    """A connection a worker reported: its client, since when, and its source."""

    __slots__ = ("peer", "since", "source")

    def __init__(self, peer: str, since: float) -> None:
        self.peer = peer
        self.since = since
        self.source: int | None = None


def make_async_pool(
    loop: Loop, listener: Listener, service: Service, settings: Settings
) -> AsyncPool:
    """The pool ``settings`` ask for (``--workers`` 0: one per CPU)."""
    from forkserve.asyncmode.service import AsyncService

    assert isinstance(service, AsyncService)  # make_service's, in async mode
    workers = settings.workers or os.cpu_count() or 1
    use_uvloop = settings.loop != "asyncio"
    if settings.user is not None or settings.group is not None:
        load_worker_code(use_uvloop)
    return AsyncPool(loop, listener, service, workers, settings.max_conns, use_uvloop=use_uvloop)


def load_worker_code(use_uvloop: bool) -> None:
    """Before --user/--group: import what a worker imports once forked, while its
    files are surely readable (a Python under /root is not, to nobody: the workers
    failed with ModuleNotFoundError: asyncio). The supervisor only holds the modules
    (their pages shared with the workers); it still never runs an event loop."""
    import forkserve.asyncmode.eventloop
    import forkserve.core.proxy
    import forkserve.core.proxynet  # noqa: F401 - read_proxy's, imported when used

    if use_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass


class AsyncPool(Pool):
    """The async supervisor's process model. See the module docstring."""

    __slots__ = (
        "admitted",
        "debt",
        "epoch",
        "free_slots",
        "held",
        "held_page",
        "max_conns",
        "next_slot",
        "open",
        "slot_of",
        "tokens",
        "use_uvloop",
    )

    def __init__(
        self,
        loop: Loop,
        listener: Listener,
        service: AsyncService,
        workers: int,
        max_conns: int,
        *,
        use_uvloop: bool = True,
    ) -> None:
        super().__init__(loop, listener, service, PoolPolicy(workers, workers, workers, 0))
        self.max_conns = max_conns
        self.use_uvloop = use_uvloop
        self.open: dict[tuple[int, int], Open] = {}
        self.tokens = os.eventfd(max_conns, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.debt = 0  # tokens to take back after --max-conns was lowered
        # The settings' generation, in a shared page every worker reads before it
        # accepts: a reload that replaces the workers moves it first, so a worker
        # never accepts with the old settings once the reload is logged (the
        # SIGTERM that retires it reaches its loop a moment later).
        self.epoch = mmap.mmap(-1, EPOCH_SIZE)
        # The tokens each worker holds, counted by the worker in its slot (see
        # asyncmode.eventloop): a worker that dies holding some (SIGKILL between
        # taking a token and reporting its accept, while it reads a PROXY header or
        # asks about --per-ip, or after its end report) leaves its count, which the
        # supervisor gives back when it reaps it.
        self.held_page = mmap.mmap(-1, HELD_SLOTS * 8)
        self.held = memoryview(self.held_page).cast("q")
        self.free_slots = list(range(HELD_SLOTS - 1, -1, -1))
        self.slot_of: dict[int, int] = {}  # a worker's pid: its slot
        self.next_slot = 0
        # Per-source limits: sources counted when a worker's question was answered
        # yes, by worker, in order, until its next A report takes each one.
        self.admitted: dict[int, collections.deque[int]] = {}

    def in_use(self) -> int:
        """Connections open: in the workers, and in children forked at a stop."""
        return len(self.open) + len(self.children) - len(self.workers)

    def has_slot(self) -> bool:
        return self.in_use() < self.max_conns

    def capacity(self) -> int:
        return self.max_conns

    def gauges(self) -> dict[str, object]:
        workers = {"idle": 0, "starting": 0}
        for worker in self.workers.values():
            workers[worker.state] = workers.get(worker.state, 0) + 1
        return {"active": self.busy(), "limit": self.capacity(), "workers": workers}

    def fork_worker(self) -> tuple[int, socket.socket | None]:
        """Prefork's, with a slot (zeroed) for the tokens the new worker will hold.

        Raises:
            OSError: as prefork's; ENOSPC when every slot is taken (not seen:
                HELD_SLOTS is far more workers than live at once).
        """
        if not self.free_slots:
            raise OSError(errno.ENOSPC, "no slot left for a worker's token count")
        slot = self.next_slot = self.free_slots[-1]
        self.held[slot] = 0
        pid, channel = super().fork_worker()
        self.slot_of[pid] = self.free_slots.pop()
        return pid, channel

    def make_worker(self, channel: object) -> AsyncWorker:  # type: ignore[override]
        assert self.listener is not None
        return AsyncWorker(
            self.listener.sock,
            self.table.status_w,
            self.alive_r,
            self.tokens,
            self.service,  # type: ignore[arg-type]
            max_conns=self.max_conns,
            epoch=self.epoch,
            held=self.held,
            slot=self.next_slot,
            policy=self.admission.policy,
            log=self.log,
            channel=channel,  # type: ignore[arg-type]
            use_uvloop=self.use_uvloop,
        )

    # -- what workers report ------------------------------------------------------

    def on_status(self, mask: int) -> None:
        # Only read: the number of workers moves at exits, deadlines and resizes,
        # never with a report (prefork's maintain here looked for spares per report).
        self.read_status(time.monotonic())

    def before_exits(self, now: float) -> None:
        self.read_status(now)  # ends reported just before a worker exited count first

    def read_status(self, now: float) -> None:
        for kind, worker, detail in self.table.reports():
            if kind == "M":  # a batch: one report a line (see asyncmode.eventloop flush)
                for line in detail.split("\n"):
                    kind, _, part = line.partition(" ")
                    self.apply(kind, worker, part, now)
            else:
                self.apply(kind, worker, detail, now)

    def apply(self, kind: str, worker: WorkerState, detail: str, now: float) -> None:
        """One report of a worker (see asyncmode.worker)."""
        pid = worker.pid
        if kind == "A":
            number, _, peer = detail.partition(" ")
            self.opened(pid, int(number), peer, now)
        elif kind == "E":
            number, _, code = detail.partition(" ")
            self.policy.crash_free()
            worker.served += 1
            status = int(code)  # below 0: cancelled as if by that signal
            fields: dict[str, object] = {"exit": status}
            if status < 0:
                fields = {"signal": describe_signal(-status)}
            self.ended((pid, int(number)), now, fields)
        elif kind == "R":
            worker.state, worker.since = "idle", now
        else:
            self.note(kind, pid, detail)

    def note(self, kind: str, pid: int, detail: str) -> None:
        """The reports that only count or log: denied, paused, resumed, blocked."""
        if kind == "D":
            self.loop.metrics.rejected("deny")  # the worker logged it
        elif kind == "P":
            self.log.warning("accept-paused", pid=pid, error=detail, pause=f"{ACCEPT_PAUSE}s")
        elif kind == "U":
            self.log.notice("accept-resumed", pid=pid, after=detail)
        elif kind == "B":
            # A handler held the loop: every connection of this worker waited.
            self.log.warning("loop-blocked", pid=pid, seconds=detail)
            self.loop.metrics.operation("loop-blocked")

    def on_channel(self, pid: int) -> None:
        """A worker asks whether the per-source limits admit a connection (see
        child.ask): judged and answered at once; a yes counts it against its source
        from now on (the worker's next ``A`` report names it)."""
        channel = self.table.channels.get(pid)
        now = time.monotonic()
        while channel is not None and pid in self.workers:
            question = read_question(channel)
            if not question:
                return  # nothing more yet; or the worker died: on_exit closes it
            source, _, answer = self.admission.judge(question, now, pid)
            if source is not None:
                self.table.counts.add(source)
                self.admitted.setdefault(pid, collections.deque()).append(source)
            if answer:
                send_answer(channel, answer)

    def opened(self, pid: int, number: int, peer: str, now: float) -> None:
        conn = self.open[(pid, number)] = Open(peer, now)
        sources = self.admitted.get(pid)
        if sources:
            conn.source = sources.popleft()
        self.loop.metrics.accepted()
        self.loop.events.accept(peer, pid, conn=number)

    def ended(self, key: tuple[int, int], now: float, status: dict[str, object]) -> None:
        conn = self.open.pop(key, None)
        if conn is None:
            return
        if conn.source is not None:
            self.table.counts.remove(conn.source)
        if self.debt:
            self.take_back()
        self.loop.metrics.ended(now - conn.since)
        self.loop.events.end(key[0], conn.peer, status, now - conn.since, conn=key[1])

    def on_exit(self, ended: Exited, now: float) -> None:
        """A worker was reaped: the connections it held end with its status, and
        every token it held goes back (the count it kept, read once it can no
        longer change it; its reports were read first, in before_exits); then
        prefork's bookkeeping (reason, back-off, log)."""
        lost = [key for key in self.open if key[0] == ended.pid]
        for key in lost:
            self.ended(key, now, ended.status_fields())
        slot = self.slot_of.pop(ended.pid, None)
        if slot is not None:
            held = self.held[slot]
            self.free_slots.append(slot)
            if held > 0:
                os.eventfd_write(self.tokens, held)
                self.take_back()  # the debt of a lowered --max-conns first
        for source in self.admitted.pop(ended.pid, ()):  # admitted, never reported
            self.table.counts.remove(source)
        super().on_exit(ended, now)
        self.waited = False  # an async worker never strands a client: see Pool.hand_on_wakeup

    def after_exits(self, now: float) -> None:
        self.conns.serve_pending(self.has_slot)
        self.maintain(now)

    # -- SIGTTIN/SIGTTOU, SIGHUP ---------------------------------------------------------

    def resize(self, step: int) -> bool:
        """SIGTTIN: one worker more; SIGTTOU: one fewer (the last one stays)."""
        self.set_workers(max(1, self.policy.max_workers + step))
        self.log.notice("pool", workers=self.policy.max_workers)
        return True

    def set_workers(self, count: int) -> None:
        self.policy.configure(
            {"min_spare": count, "max_spare": count, "max_workers": count, "max_requests": 0}
        )
        staying = [w for w in self.workers.values() if not w.stopping]
        for worker in staying[count:]:
            self.retire(worker, "resize")
        self.maintain(time.monotonic())

    def apply_reload(self, plan: ReloadPlan) -> None:
        """A reload: --max-conns moves the tokens; --workers resizes; anything a
        worker holds (the handler's settings, the rules, TLS) replaces the workers."""
        if plan.max_conns is not None and plan.max_conns != self.max_conns:
            self.retune(plan.max_conns)
        if plan.workers and plan.workers != self.policy.max_workers:
            self.set_workers(plan.workers)
        asking = self.admission.policy.gate.limits_sources
        if plan.changed - SUPERVISOR_SETTINGS or asking != self.asking:
            generation = int.from_bytes(self.epoch[:EPOCH_SIZE], "little") + 1
            self.epoch[:EPOCH_SIZE] = generation.to_bytes(EPOCH_SIZE, "little")
        super().apply_reload(plan)

    def retune(self, max_conns: int) -> None:
        """A new --max-conns: more tokens at once; fewer as connections end."""
        change = max_conns - self.max_conns
        self.max_conns = max_conns
        if change > 0:
            os.eventfd_write(self.tokens, change)
        else:
            self.debt += -change
            self.take_back()

    def take_back(self) -> None:
        """Take back what tokens are free, up to the debt (never blocks)."""
        while self.debt:
            try:
                os.eventfd_read(self.tokens)
            except BlockingIOError:
                return
            self.debt -= 1

    def close_in_child(self, keep_status: bool = False) -> None:
        super().close_in_child(keep_status)
        if not keep_status:
            os.close(self.tokens)  # a worker keeps it: a child forked at a stop does not

    def close(self) -> None:
        super().close()
        os.close(self.tokens)
        self.epoch.close()
        self.held.release()
        self.held_page.close()
