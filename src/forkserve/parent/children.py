"""The table of live children, and reaping them."""

from __future__ import annotations

import os
import signal
import time


class Child:
    """A forked child: its pid (also its process group), its peer, its source (the
    key its connection counts against: see core.gate.source_key; None while it counts
    against none, until its PROXY header names the client), when it started.

    A plain class with slots, not a dataclass: dataclasses imports inspect and ast,
    memory the parent would carry into every fork.
    """

    __slots__ = ("peer", "pid", "source", "started")

    def __init__(self, pid: int, peer: str, started: float, source: int | None = -1) -> None:
        self.pid = pid
        self.peer = peer
        self.started = started
        self.source = source


class Exited:
    """A reaped child. ``child`` is None for a pid forkserve did not start."""

    __slots__ = ("child", "core_dumped", "exit_code", "pid", "signal_number")

    def __init__(
        self,
        pid: int,
        child: Child | None,
        exit_code: int | None,
        signal_number: int | None,
        core_dumped: bool,
    ) -> None:
        self.pid = pid
        self.child = child
        self.exit_code = exit_code
        self.signal_number = signal_number
        self.core_dumped = core_dumped

    def status_fields(self) -> dict[str, object]:
        """Log fields: ``exit=N``, or ``signal=SIGKILL(9)`` (plus ``core=yes``)."""
        if self.signal_number is None:
            return {"exit": self.exit_code}
        fields: dict[str, object] = {"signal": describe_signal(self.signal_number)}
        if self.core_dumped:
            fields["core"] = "yes"
        return fields


def describe_signal(number: int) -> str:
    """``9`` -> ``SIGKILL(9)``; unknown numbers keep just the number."""
    try:
        return f"{signal.Signals(number).name}({number})"
    except ValueError:
        return f"SIG{number}({number})"


def decode_status(pid: int, status: int, child: Child | None) -> Exited:
    """Turn a waitpid status into an Exited record (WIFSIGNALED, not the seed's mix-up)."""
    if os.WIFSIGNALED(status):
        return Exited(pid, child, None, os.WTERMSIG(status), os.WCOREDUMP(status))
    return Exited(pid, child, os.WEXITSTATUS(status), None, False)


class ChildTable:
    """Live children by pid, and how many each source has open.

    Each child leads its own process group (see parent.fork). A source's count drops
    whatever way its child ends (exit, crash, kill), because reaping is the only way
    out of the table: systemd leaked such counts (issue 20685).
    """

    def __init__(self) -> None:
        self._children: dict[int, Child] = {}
        self._per_source: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._children)

    def __contains__(self, pid: object) -> bool:
        return pid in self._children

    def get(self, pid: int) -> Child | None:
        return self._children.get(pid)

    def add(self, pid: int, peer: str, source: int | None = -1) -> Child:
        """A new child, counted against ``source`` (None: against none yet)."""
        child = Child(pid, peer, time.monotonic(), source)
        self._children[pid] = child
        if source is not None:
            self._per_source[source] = self._per_source.get(source, 0) + 1
        return child

    def advertise(self, pid: int, peer: str, source: int | None) -> None:
        """A child's PROXY header named its client: log it as ``peer`` from now on,
        and count it against ``source`` (None: the client was refused) until it is
        reaped. A child counts against one source at most, once."""
        child = self._children.get(pid)
        if child is None:
            return
        child.peer = peer
        if source is not None and child.source is None:
            child.source = source
            self._per_source[source] = self._per_source.get(source, 0) + 1

    def open_from(self, source: int) -> int:
        """Children now serving ``source``."""
        return self._per_source.get(source, 0)

    def _remove(self, pid: int) -> Child | None:
        child = self._children.pop(pid, None)
        if child is not None and child.source is not None:
            left = self._per_source[child.source] - 1
            if left:
                self._per_source[child.source] = left
            else:
                del self._per_source[child.source]
        return child

    def reap(self) -> list[Exited]:
        """Reap every finished child without blocking: ``waitpid(-1, WNOHANG)`` until 0.

        ``-1``, not the seed's ``0``: a child that changed its process group (all of
        ours do) is still reaped.
        """
        exited: list[Exited] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # ECHILD: no children at all
                return exited
            if pid == 0:
                return exited
            exited.append(decode_status(pid, status, self._remove(pid)))

    def pids(self) -> list[int]:
        return list(self._children)

    def signal(self, pid: int, sig: int) -> None:
        """Send ``sig`` to a child's process group (the child and what it started)."""
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            # The group is gone or not yet formed; signal the child itself.
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # exited; the reaper will see it

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every child's process group."""
        for pid in list(self._children):
            self.signal(pid, sig)
