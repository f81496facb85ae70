"""What both process models' parents share: the loop skeleton, signals, and stopping.

The loop reads like s6-tcpserverd's: wait, handle signals first (SIGCHLD reaps every
finished child), then whatever else became ready, then timers. The only timeouts are
the ones a state needs, so an idle parent sleeps in epoll_wait with no timeout and
uses no CPU. ``ForkLoop`` (fork mode) and ``PreforkLoop`` (prefork mode) fill in what
differs: what a connection is given to, and what an exit means.
"""

from __future__ import annotations

import gc
import selectors
import signal
import time
from collections.abc import Callable

from forkserve._children import ChildTable, Exited
from forkserve._log import Log
from forkserve._signals import SignalPipe

# After SIGTERM to the children, wait this long before SIGKILL.
KILL_AFTER = 3.0


class Supervisor:
    """The parent's loop and stop sequence. ``run()`` returns once stopped.

    Stopping, gracefully (SIGTERM, SIGINT): ``begin_graceful_stop`` lets the subclass
    stop taking connections; children then have ``grace`` seconds, after which
    ``expire_grace`` asks them to end (SIGTERM in fork mode) and, KILL_AFTER seconds
    later, whatever is left gets SIGKILL. Fast (SIGQUIT, a second SIGINT): straight to
    ``expire_grace``.
    """

    def __init__(self, log: Log, *, grace: float, ready: Callable[[], None] | None) -> None:
        self.log = log
        self.grace = grace
        self.ready = ready
        self.children = ChildTable()
        self.stopping: str | None = None  # None, "graceful" or "fast"
        self.phase = ""  # while stopping: "drain", "term" or "kill"
        self.deadline: float | None = None
        self.sel: selectors.BaseSelector = selectors.DefaultSelector()
        self.sigs: SignalPipe | None = None

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        with SignalPipe() as sigs, self.sel:
            self.sigs = sigs
            self.sel.register(sigs, selectors.EVENT_READ)
            self.start()
            # Everything allocated so far lives as long as the parent: keep the
            # collector away from it, so a child never copies pages just to scan them.
            gc.freeze()
            if self.ready is not None:
                self.ready()
            while not self.finished():
                self.before_wait()
                events = self.sel.select(self.timeout())
                if any(key.fileobj is sigs for key, _ in events):
                    self.on_signals(sigs.drain())
                for key, mask in events:
                    if key.fileobj is not sigs:
                        self.on_ready(key, mask)
                self.on_timers(time.monotonic())
        self.sigs = None

    def timeout(self) -> float | None:
        """Seconds until the nearest deadline, or None to wait for events only."""
        now = time.monotonic()
        deadlines = [d for d in (self.deadline, *self.deadlines()) if d is not None]
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
            elif number != signal.SIGCHLD:
                self.log.debug("signal-ignored", signal=signal.Signals(number).name)
        if signal.SIGCHLD in signals:
            self.on_exits(self.children.reap())

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
        self.on_deadlines(now)
        if self.deadline is None or now < self.deadline:
            return
        if self.phase == "drain":
            self.end_children()
        elif self.phase == "term":
            self.log.warning("kill", signal="SIGKILL", children=len(self.children))
            self.children.signal_all(signal.SIGKILL)
            self.phase = "kill"
            self.deadline = None

    # -- what the process models fill in ------------------------------------------------

    def start(self) -> None:
        """Set up before the loop first waits (prefork starts its workers here)."""

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

    def begin_graceful_stop(self, signame: str, fast: bool = False) -> None:
        raise NotImplementedError

    def expire_grace(self) -> None:
        raise NotImplementedError

    def finished(self) -> bool:
        raise NotImplementedError

    def active(self) -> str:
        raise NotImplementedError
