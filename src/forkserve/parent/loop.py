"""The parent's one loop: the selector, the signal pipe, the child table, the deadlines
and the stop state, shared by every process model.

The loop reads like s6-tcpserverd's: wait, handle signals first (SIGCHLD reaps every
finished child and hands each exit to the child's owner), then whatever else became
ready (every descriptor in the selector carries its callback), then deadlines. An idle
parent sleeps in epoll_wait with no timeout (timeouts only where a state needs one).

What differs between fork mode and prefork is the process model (parent.forkmodel's
ForkModel, prefork.pool's Pool), an object the loop calls through a few methods:

- ``start()``, ``before_wait()``: set up; adjust what the selector watches;
- ``has_slot()``, ``busy()``, ``capacity()``, ``queued()``, ``gauges()``: its load;
- ``before_exits(now)``, ``after_exits(now)``: around a batch of exits (each exit goes
  to its child's owner, ``on_exit(ended, now)``: the model, or its ``Connections``);
- ``stop(drain=, shared=)``, ``expire()``, ``terminate()``: the stop phases;
- ``deadline()``, ``on_deadline(now)``: its timers;
- ``resize(step)``, ``prepare_reload(plan)``, ``apply_reload(plan)``: SIGTTIN/SIGTTOU, SIGHUP;
- ``close_in_child()``, ``close()``, and ``listener`` (None once closed).

Operations (the metrics endpoint, systemd, upgrade, reload) register their own
descriptors and deadlines here.
"""

from __future__ import annotations

import gc
import os
import selectors
import signal
import time

from forkserve.core.gate import Policy
from forkserve.parent.admission import Admission
from forkserve.parent.children import ChildTable, Exited
from forkserve.parent.events import Events
from forkserve.parent.operations import NoMetrics, Reloading, Upgrading
from forkserve.parent.signals import SignalPipe

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from forkserve._log import Log
    from forkserve.config.reload import ReloadPlan
    from forkserve.core.metrics import Metrics
    from forkserve.parent.endpoint import MetricsEndpoint
    from forkserve.parent.model import ProcessModel
    from forkserve.parent.systemd import Status

# After SIGTERM to the children, wait this long before SIGKILL.
KILL_AFTER = 3.0


class Loop:
    """Serves with a process model until stopped (``run()`` then returns).

    Stopping, gracefully (SIGTERM, SIGINT): the model stops taking connections;
    children then have ``grace`` seconds ("drain"), after which they are asked to end
    (SIGTERM, "term") and, KILL_AFTER seconds later, whatever is left gets SIGKILL
    ("kill"). Fast (SIGQUIT, a second SIGINT): straight to "term".
    """

    __slots__ = (
        "actions",
        "admission",
        "children",
        "clock",
        "deadline",
        "endpoint",
        "events",
        "grace",
        "log",
        "metrics",
        "model",
        "phase",
        "ready",
        "reloading",
        "sel",
        "sigs",
        "status",
        "stopping",
        "timed",
        "upgrading",
    )

    def __init__(
        self,
        log: Log,
        policy: Policy | None = None,
        *,
        grace: float,
        ready: Callable[[], None] | None = None,
        reloader: Callable[[], None] | None = None,
        upgrade_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.clock = clock  # monotonic seconds (a unit test passes a fake clock)
        self.grace = grace
        self.ready = ready
        self.sel: selectors.BaseSelector = selectors.DefaultSelector()
        self.sigs: SignalPipe | None = None
        self.children = ChildTable()
        self.events = Events(log, self.active)
        self.metrics: Metrics | NoMetrics = NoMetrics()
        self.admission = Admission(self, policy if policy is not None else Policy())
        self.timed: list[Any] = [self.admission]  # objects with deadline(), on_deadline()
        self.stopping: str | None = None  # None, "graceful" or "fast"
        self.phase = ""  # while stopping: "drain", "term" or "kill"
        self.deadline: float | None = None
        # Operations: --metrics, systemd (NOTIFY_SOCKET), SIGHUP, SIGUSR2.
        self.endpoint: MetricsEndpoint | None = None
        self.status: Status | None = None
        self.reloading = Reloading(self, reloader)
        self.upgrading = Upgrading(self, upgrade_timeout)
        self.actions: dict[int, Callable[[int], None]] = {
            signal.SIGTERM: self.on_terminate,
            signal.SIGINT: self.on_interrupt,
            signal.SIGQUIT: self.on_quit,
            signal.SIGHUP: self.reloading.on_signal,
            signal.SIGUSR2: self.upgrading.on_signal,
            signal.SIGTTIN: self.on_resize,
            signal.SIGTTOU: self.on_resize,
            signal.SIGCHLD: self.on_child,
        }

    model: ProcessModel  # set by use(), before run()

    def use(self, model: ProcessModel) -> None:
        """Serve with ``model`` (a process model: see the module docstring)."""
        self.model = model
        self.timed.append(model)

    def watch(self, fileobj: Any, callback: Callable[[int], object], room: int = 0) -> None:
        """Call ``callback(mask)`` whenever ``fileobj`` is readable (or, ``room``
        EVENT_WRITE, writable)."""
        self.sel.register(fileobj, selectors.EVENT_READ | room, callback)

    def unwatch(self, fileobj: Any) -> None:
        self.sel.unregister(fileobj)

    def add_timer(self, timed: Any) -> None:
        """Ask ``timed.deadline()`` before each wait; ``timed.on_deadline(now)`` after."""
        self.timed.append(timed)

    def drop_timer(self, timed: Any) -> None:
        self.timed.remove(timed)

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped. Every selector key's data is its callback, ``data(mask)``."""
        with SignalPipe() as sigs, self.sel:
            self.sigs = sigs
            self.start(sigs)
            try:
                while not self.finished():
                    self.model.before_wait()
                    self.notify()
                    # Records taken already: a handler that ran after its wakeup
                    # byte was read must not wait for the next event.
                    events = self.sel.select(0.0 if sigs.arrived else self.timeout())
                    if sigs.arrived:
                        self.on_signals(sigs.take())
                    for key, mask in events:
                        key.data(mask)
                    self.on_deadlines(self.clock())
            finally:
                self.log.detach()
                self.close_endpoint()
        self.sigs = None

    def start(self, sigs: SignalPipe) -> None:
        self.watch(sigs, lambda mask: sigs.clear())
        self.log.attach(self.sel)  # a full log is watched until it has room
        if self.endpoint is not None:
            self.endpoint.attach(self.sel)
        self.model.start()
        # Everything allocated so far lives as long as the parent: keep the
        # collector away from it, so a child never copies pages just to scan them.
        gc.freeze()
        if self.ready is not None:
            self.ready()
        if self.status is not None:
            self.status.ready(self.active())

    def timeout(self) -> float | None:
        """Seconds until the nearest deadline, or None to wait for events only."""
        soonest = self.deadline
        if self.status is not None and self.status.due is not None:
            soonest = self.status.due if soonest is None else min(soonest, self.status.due)
        for timed in self.timed:
            due = timed.deadline()
            if due is not None and (soonest is None or due < soonest):
                soonest = due
        return None if soonest is None else max(0.0, soonest - self.clock())

    def on_signals(self, signals: list[int]) -> None:
        """Each signal's action (``actions``), in order; SIGCHLD once, last."""
        for number in signals:
            if number != signal.SIGCHLD:
                self.actions.get(number, self.ignore)(number)
        if signal.SIGCHLD in signals:
            self.actions[signal.SIGCHLD](signal.SIGCHLD)
        self.notify()  # STOPPING=1 at once: the loop may end this turn

    def on_deadlines(self, now: float) -> None:
        for timed in tuple(self.timed):
            timed.on_deadline(now)
        if self.deadline is None or now < self.deadline:
            return
        if self.phase == "drain":
            self.end_children()
        elif self.phase == "term":
            self.log.warning("kill", signal="SIGKILL", children=len(self.children))
            self.children.signal_all(signal.SIGKILL)
            self.phase = "kill"
            self.deadline = None

    def finished(self) -> bool:
        return self.stopping is not None and not self.children and not self.model.queued()

    def ignore(self, number: int) -> None:
        self.log.debug("signal-ignored", signal=signal.Signals(number).name)

    def on_terminate(self, number: int) -> None:
        if self.stopping is None:
            self.stop_gracefully(signal.Signals(number).name)

    def on_interrupt(self, number: int) -> None:
        if self.stopping is None:
            self.stop_gracefully(signal.Signals(number).name)
        elif self.stopping == "graceful":
            self.stop_fast(signal.Signals(number).name)  # a second Ctrl-C

    def on_quit(self, number: int) -> None:
        if self.stopping != "fast":
            self.stop_fast(signal.Signals(number).name)

    def on_resize(self, number: int) -> None:
        """SIGTTIN grows a pool's spare range by one worker, SIGTTOU shrinks it."""
        if not self.model.resize(1 if number == signal.SIGTTIN else -1):
            self.ignore(number)

    def on_child(self, number: int) -> None:
        """Reap every finished child; hand each exit to its owner. The model reads its
        reports in between (a worker's last ``E``; a dead forker's last ``started``)."""
        exits = self.children.reap()
        now = self.clock()
        self.model.before_exits(now)
        self.hand_exits(self.children.claim(exits), now)

    def hand_exits(self, exits: list[Exited], now: float) -> None:
        """Each exit to its child's owner (reaped here, or reported by a forker)."""
        for ended in exits:
            self.admission.forget(ended)
            if ended.owner is not None:
                ended.owner.on_exit(ended, now)
            else:
                self.log.debug("end-unknown", pid=ended.pid, **ended.status_fields())
        self.model.after_exits(now)

    # -- stopping ---------------------------------------------------------------------

    def stop_gracefully(self, signame: str) -> None:
        """Stop taking connections; serve what was accepted within ``grace``."""
        self.stopping = "graceful"
        queued = self.model.stop(drain=True, shared=self.upgrading.current is not None)
        self.log.notice(
            "stop",
            signal=signame,
            mode="graceful",
            conns=self.active(),
            queued=queued,
            grace=f"{self.grace}s",
        )
        self.phase = "drain"
        self.deadline = self.clock() + self.grace

    def stop_fast(self, signame: str) -> None:
        if self.stopping is None:
            self.model.stop(drain=False, shared=self.upgrading.current is not None)
        self.stopping = "fast"
        self.log.notice("stop", signal=signame, mode="fast", conns=self.active())
        self.end_children()

    def end_children(self) -> None:
        """Drop what is queued, ask every child to end now; SIGKILL KILL_AFTER later."""
        self.model.expire()
        if self.children:
            self.log.notice("terminate", signal="SIGTERM", children=len(self.children))
        self.model.terminate()
        self.phase = "term"
        self.deadline = self.clock() + KILL_AFTER

    def hand_over(self, new_pid: int) -> None:
        """The new master serves: stop accepting, without a drain of the shared queue.

        The queue is the new master's now, so nothing is accepted first (as a
        graceful stop does) and the socket is closed, never shut down. Under
        systemd, MAINPID moves to the new master, and this one sends nothing more
        (a STOPPING=1 now would stop the service).
        """
        self.log.notice("upgrade-ready", pid=new_pid)
        if self.status is not None:
            self.status.notifier.send(MAINPID=new_pid, STATUS=f"upgraded to pid {new_pid}")
            self.status = None
        if self.stopping is not None:
            return  # a stop began meanwhile: it goes on as it started
        self.stopping = "graceful"
        self.model.stop(drain=False, shared=True)
        self.close_endpoint()
        self.phase = "drain"
        self.deadline = self.clock() + self.grace
        self.log.notice(
            "stop",
            signal="SIGUSR2",
            mode="upgrade",
            conns=self.active(),
            queued=0,
            grace=f"{self.grace}s",
            pid=os.getpid(),
        )

    def active(self) -> str:
        """``busy/limit`` for the logs."""
        return f"{self.model.busy()}/{self.model.capacity()}"

    def gauges(self) -> dict[str, object]:
        """The numbers a scrape reads now (see core.metrics)."""
        gauges: dict[str, object] = self.model.gauges()
        return gauges

    def health(self) -> tuple[int, bytes]:
        """``/healthz``: 200 while serving; 503 once stopping, so a balancer moves on."""
        return (200, b"ok\n") if self.stopping is None else (503, b"stopping\n")

    def notify(self) -> None:
        if self.status is not None:
            self.status.update(self.stopping is not None, self.active(), self.clock())

    def add_metrics(self, metrics: Metrics, endpoint: MetricsEndpoint) -> None:
        """Count into ``metrics``; serve ``endpoint`` from this loop."""
        self.metrics = metrics
        self.endpoint = endpoint
        self.add_timer(endpoint)

    def add_status(self, status: Status) -> None:
        """Keep systemd informed (READY, STATUS, STOPPING)."""
        self.status = status

    def apply_reload(self, plan: ReloadPlan) -> None:
        """Apply a reload's plan (see config.reload): new settings apply to new
        connections; the process model takes what is its own."""
        self.log.level = plan.log_level
        self.log.set_format(plan.log_format)
        self.grace = plan.grace
        self.upgrading.timeout = plan.upgrade_timeout
        self.admission.take(plan.policy)
        self.model.apply_reload(plan)

    def close_endpoint(self) -> None:
        if self.endpoint is not None:
            self.drop_timer(self.endpoint)
            self.endpoint.close()
            self.endpoint = None

    def close_in_child(self) -> None:
        """Undo the parent's set-up in a fresh child (see fork_child)."""
        self.close_shared_in_child()
        self.model.close_in_child()

    def close_shared_in_child(self) -> None:
        """All but the model's: the selector, the signal pipe, the question channels,
        the operations' descriptors and the log's backlog (see Log.in_child).

        Descriptors are closed by number, not through their objects' close(): the
        child never uses those objects again and ends in os._exit, and every object
        a child touches is memory it copies from the parent (see parent.signals).
        """
        os.close(self.sel.fileno())  # type: ignore[attr-defined]
        if self.sigs is not None:
            self.sigs.close_in_child()
        self.admission.close_in_child()
        self.log.in_child()
        if self.endpoint is not None:
            self.endpoint.close_in_child()
        if self.status is not None:
            self.status.notifier.close_in_child()
        self.upgrading.close_in_child()

    def close(self) -> None:
        """Release what the model holds beyond the loop itself."""
        self.model.close()
