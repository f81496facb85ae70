"""The table of live children, who owns each, and reaping them.

Every child has an owner: the object that started it and is handed its exit (the
fork model's connections, the prefork pool's workers, an upgrade's new master). The
table counts connections per source (``SourceCounts``, shared with the prefork pool,
whose busy workers count there too).
"""

from __future__ import annotations

import os
import signal
import time

from forkserve.parent.signals import signal_group

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from typing import Any


class SourceCounts:
    """Connections open per source (see core.gate.source_key): the one counter the
    gate's per-source limits read, in both process models."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[int, int] = {}

    def open_from(self, source: int) -> int:
        return self._open.get(source, 0)

    def add(self, source: int) -> None:
        self._open[source] = self._open.get(source, 0) + 1

    def remove(self, source: int) -> None:
        left = self._open[source] - 1
        if left:
            self._open[source] = left
        else:
            del self._open[source]


class Child:
    """A forked child: its pid (also its process group), its peer, its source (the
    key its connection counts against: see core.gate.source_key; None while it counts
    against none, until its PROXY header names the client), when it started, and its
    owner (whose ``on_exit(ended, now)`` is handed its exit).

    A plain class with slots, not a dataclass: dataclasses imports inspect and ast,
    memory the parent would carry into every fork.
    """

    __slots__ = ("owner", "peer", "pid", "source", "started", "via")

    def __init__(
        self, pid: int, peer: str, started: float, source: int | None = -1, owner: Any = None
    ) -> None:
        self.pid = pid
        self.peer = peer
        self.started = started
        self.source = source
        self.owner = owner
        # The forker that is its parent (parent.forker.Link), which signals it;
        # None: it is ours, signalled directly.
        self.via: Any = None


class Exited:
    """A reaped child. ``child`` is None for a pid that is no connection's or
    worker's; ``owner`` is who started it (None: forkserve did not)."""

    __slots__ = ("child", "core_dumped", "exit_code", "owner", "pid", "signal_number")

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
        self.owner = child.owner if child is not None else None

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
    out of the table: systemd leaked such counts (issue 20685). Children that serve
    nothing (an upgrade's new master) are ``adopt``-ed: not counted, not signalled at
    a stop, but their exit still goes to their owner.
    """

    def __init__(self, counts: SourceCounts | None = None) -> None:
        self._children: dict[int, Child] = {}
        self.counts = counts if counts is not None else SourceCounts()
        self._others: dict[int, Any] = {}  # adopted: pid -> owner

    def __len__(self) -> int:
        return len(self._children)

    def __contains__(self, pid: object) -> bool:
        return pid in self._children

    def get(self, pid: int) -> Child | None:
        return self._children.get(pid)

    def add(
        self,
        pid: int,
        peer: str,
        source: int | None = -1,
        owner: Any = None,
        via: Any = None,
    ) -> Child:
        """A new child, counted against ``source`` (None: against none yet), whose
        exit goes to ``owner``. ``via``: the forker that forked it (parent.forker),
        which counted it against ``source`` already, from its admission."""
        child = Child(pid, peer, time.monotonic(), source, owner)
        self._children[pid] = child
        if via is not None:
            child.via = via
        elif source is not None:
            self.counts.add(source)
        return child

    def ended(self, pid: int, status: int) -> Exited:
        """A child a forker reaped (its waitpid ``status``): out of the table."""
        return decode_status(pid, status, self._remove(pid))

    def claim(self, exits: list[Exited]) -> list[Exited]:
        """Exits reaped before the child was known: a dead forker's child whose
        ``started`` report was read after the reap (see parent.forker)."""
        for ended in exits:
            if ended.child is None and ended.owner is None:
                child = self._remove(ended.pid)
                if child is not None:
                    ended.child, ended.owner = child, child.owner
        return exits

    def orphaned(self, via: Any) -> None:
        """Forker ``via`` died: its children are ours now (we are their subreaper),
        signalled directly from now on."""
        for child in self._children.values():
            if child.via is via:
                child.via = None

    def strays(self) -> list[int]:
        """Our children that are in no table and lead a process group of their own:
        the connections' processes a dead forker had forked and not yet reported
        (we are their subreaper). Its other orphans, a program's own children, are
        in their connection's group. Linux's list of a task's children; the
        supervisor is one thread, so its main task's list is all of them."""
        pid = os.getpid()
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as listing:  # noqa: PTH123 - no pathlib in the parent
                listed = [int(text) for text in listing.read().split()]
        except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN
            return []
        found = []
        for child in listed:
            if child in self._children or child in self._others:
                continue
            try:
                if os.getpgid(child) == child:
                    found.append(child)
            except ProcessLookupError:
                pass  # gone (reaped as its exit went by, between the list and here)
        return found

    def adopt(self, pid: int, owner: Any) -> None:
        """A child that is no connection's (see the class docstring)."""
        self._others[pid] = owner

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
            self.counts.add(source)

    def open_from(self, source: int) -> int:
        """Children now serving ``source``."""
        return self.counts.open_from(source)

    def _remove(self, pid: int) -> Child | None:
        child = self._children.pop(pid, None)
        if child is not None and child.source is not None:
            self.counts.remove(child.source)
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
            ended = decode_status(pid, status, self._remove(pid))
            if ended.child is None and self._others:
                ended.owner = self._others.pop(pid, None)
            exited.append(ended)

    def pids(self) -> list[int]:
        return list(self._children)

    def signal(self, pid: int, sig: int) -> None:
        """Send ``sig`` to a child's process group (the child and what it started),
        through its forker when it has one (its parent: never a reused pid)."""
        child = self._children.get(pid)
        if child is not None and child.via is not None:
            child.via.kill(pid, sig)
            return
        signal_group(pid, sig)

    def signal_process(self, pid: int, sig: int) -> bool:
        """Send ``sig`` to child ``pid`` alone, through its forker when it has one;
        False if it is gone already (signalled directly: ESRCH)."""
        child = self._children.get(pid)
        if child is not None and child.via is not None:
            child.via.signal_process(pid, sig)
            return True
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every child's process group."""
        for pid in list(self._children):
            self.signal(pid, sig)
