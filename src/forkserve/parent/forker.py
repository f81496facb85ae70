"""Fork mode's engine, supervisor side: the forker that forks connections' processes.

The supervisor admits each connection as before, then hands it to the forker
(forker.process), a small process started fresh with ``posix_spawn``, over one
SOCK_SEQPACKET socketpair (the socket as SCM_RIGHTS; format in forker.wire). The
forker forks, reaps, and reports; the supervisor writes the same ``accept``/``end``
lines, counts and metrics as when it forked itself (docs/performance.md says why:
a fork costs what the forking process has mapped and written).

- A connection counts against ``--max-conns`` and its source from admission until
  its exit is reported; ``accept`` is logged when its start is.
- The supervisor never blocks on the channel: its end is non-blocking; when it is
  full, what is not sent waits in ``outbox`` (in order; dropped only at a stop's
  end), the model stops accepting (the backlog queues), the channel is watched.
- Signals to connections' processes go through their forker, which is their parent
  and so can never hit a reused pid.
- The supervisor waits for a forker at start-up only (before the listen line). One
  started later (a reload, a respawn) is a "starting" link (parent.forkerlink): its
  READY, error, EOF or START_TIMEOUT comes through the loop; the supervisor serves on.
- The supervisor is a child subreaper: if a forker dies, its children become the
  supervisor's, reaped and ended as any other; what was not yet sent waits for the
  next forker (accepting stops until it is ready). Connections the dead one had
  received but not reported started are lost (``forker-died ... lost=N``), never
  sent twice; those it had forked are found and tracked (``adopted=N``).
- A reload starts a new forker for the new settings and applies once it is READY
  (the old one serving meanwhile), or is refused if it fails (``reload-failed``).
  A replaced forker is kept until its children end (``retire``), then it exits.
- Exec mode that posix_spawns every program (parent.spawn) needs no forker: none
  runs until a reload makes one needed, and a reload that makes it unneeded retires it.
- At the end of a stop's grace period (or a fast stop), connections still waiting
  in an outbox, never sent, are closed and their slots released (``forker-dropped
  waiting=N``); those a forker received are started and ended as any other (one
  it starts after the stop's SIGTERM or SIGKILL went out is sent it at once).
"""

from __future__ import annotations

import os
import selectors
import signal

from forkserve._errors import EXIT_TEMPORARY
from forkserve.forker import wire
from forkserve.parent.forkerlink import Launch, Link
from forkserve.parent.forkerstart import (
    START_TIMEOUT,
    StartFailed,
    become_subreaper,
    launch,
    reap_forker,
    spawn,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from forkserve._errors import ForkserveError
    from forkserve.child.connection import Connection
    from forkserve.parent.children import Exited
    from forkserve.parent.forkmodel import Connections
    from forkserve.parent.loop import Loop


# Reloadable settings the forker does not hold: a reload that changes only these
# keeps it (setting keys, as config.reload names them).
SUPERVISOR_ONLY = frozenset({"grace", "upgrade-timeout", "max-conns"})


class Forkers:
    """The forkers of fork mode: the current one, one starting for a reload
    (``next``), and old ones draining after a reload or a forker's death. Held by
    ``Connections``; one of the loop's timers while a forker is starting.

    Resource handling: ``close()`` (at the loop's end) closes every channel and waits
    EXIT_TIMEOUT for each forker to exit, then SIGKILLs it.
    """

    __slots__ = (
        "conns",
        "current",
        "dead",
        "links",
        "loop",
        "needed",
        "next",
        "next_id",
        "recipe",
        "stale",
        "then",
    )

    def __init__(self, loop: Loop, conns: Connections, recipe: bytes, *, needed: bool) -> None:
        self.loop = loop
        self.conns = conns
        self.recipe = recipe
        self.needed = needed  # False: every program is spawned (parent.spawn)
        self.current: Link | None = None
        self.dead: Link | None = None  # the current forker, died, until one replaces it
        self.next: Link | None = None  # starting for a reload, which waits for it
        self.then: Callable[[ForkserveError | None], None] | None = None  # that reload
        self.links: list[Link] = []
        self.next_id = 0
        # A reload's forker failed or was cancelled: the configuration source took its
        # settings already, so the next reload's changes may not show them: it starts
        # a new forker whatever they list.
        self.stale = False

    def start(self) -> None:
        """Start the current forker, waiting until it is ready (a start-up step).

        Raises:
            StartFailed: it did not start (see forkerstart.spawn).
        """
        if not self.links:
            become_subreaper()
        pid, channel = spawn(self.recipe)
        self.current = self.add(Link(self, pid, channel))
        self.loop.log.debug("forker", pid=pid)

    def begin(self, recipe: bytes) -> Link:
        """Start a forker without waiting for it: a starting link, whose READY (or
        failure) the loop reads (``greeted``), or its start timeout (``on_deadline``).

        Raises:
            StartFailed: it could not be started at all (see forkerstart.launch).
        """
        if not self.links:
            become_subreaper()
        pid, channel = launch(recipe)
        if self.deadline() is None:
            self.loop.add_timer(self)  # only while one starts: no cost per wait otherwise
        link = self.add(Link(self, pid, channel, self.loop.clock() + START_TIMEOUT))
        self.loop.log.info("forker-starting", pid=pid)
        return link

    def add(self, link: Link) -> Link:
        self.loop.children.adopt(link.pid, link)
        self.loop.watch(link.channel, link.on_readable)  # a new link: its channel is open
        link.watched = True
        self.links.append(link)
        return link

    def greeted(self, link: Link, failure: StartFailed | None) -> None:
        """A starting forker's first record (or EOF, or its timeout): ready, or not."""
        link.due = None  # no deadline left either way
        if self.deadline() is None:
            self.loop.drop_timer(self)
        if failure is None:
            link.ready = True
            self.loop.log.debug("forker", pid=link.pid)
            if link is self.next:
                self.promote(link)
            return
        link.retiring = True
        link.close()
        if link is self.next:
            self.settle(failure)
        elif link is self.current:  # a respawn: what waits for it waits for the next
            self.loop.log.warning("forker-failed", pid=link.pid, error=str(failure))
            self.current, self.dead = None, link
            self.conns.acceptor.pause("forker")

    def reload(
        self,
        recipe: bytes,
        changed: frozenset[str],
        spawned: bool,
        hold: Callable[[], Callable[[ForkserveError | None], None]],
    ) -> None:
        """Before a reload applies: a new forker when it changed what the forker holds,
        or one is needed now (a program no longer ``spawned``). A reload still waiting
        for its forker is refused first: this newer one supersedes it.

        Raises:
            StartFailed: the new forker could not be started at all.
        """
        self.cancel("a newer reload came")
        if not spawned and (self.current is None or self.stale or changed - SUPERVISOR_ONLY):
            self.replace(recipe, hold)

    def replace(
        self, recipe: bytes, hold: Callable[[], Callable[[ForkserveError | None], None]]
    ) -> None:
        """Start a reload's forker; the reload waits (``hold``, without blocking) until
        it is ready (then it takes new connections, the old one retiring) or fails.

        Raises:
            StartFailed: the new forker could not be started at all.
        """
        try:
            self.next = self.begin(recipe)
        except StartFailed:
            self.stale = True  # see __init__
            raise
        self.then = hold()

    def promote(self, link: Link) -> None:
        """A reload's forker is ready: it is the current one; the reload applies."""
        old, self.current = self.current, link
        for gone in (old, self.dead):
            if gone is not None:
                gone.retiring = True
                self.retire(gone)
        self.dead = None
        self.settle(None)

    def settle(self, error: ForkserveError | None) -> None:
        then, self.then, self.next = self.then, None, None
        self.stale = error is not None
        if then is not None:
            then(error)

    def cancel(self, reason: str) -> None:
        """A reload waiting for its forker is refused (a newer one came, a stop)."""
        link = self.next
        if link is not None:
            link.retiring = True
            link.close()
            self.settle(StartFailed(EXIT_TEMPORARY, reason))

    def applied(self, recipe: bytes, *, needed: bool) -> None:
        """A reload applied: ``recipe`` is what a respawn starts from; a forker no
        longer ``needed`` (every program spawned) retires."""
        self.recipe, self.needed = recipe, needed
        if not needed and self.current is not None:
            self.current.retiring = True
            self.current.retire_if_done()
            self.current = None

    def retire(self, link: Link) -> None:
        pending = link.outbox
        link.outbox = []
        current = self.current
        assert current is not None
        for item, socks in pending:  # not sent yet: the new forker takes them
            if item[0] in wire.LAUNCHES:
                launch = link.launches.pop(item[1])  # type: ignore[call-overload]
                launch.link = current
                current.launches[item[1]] = launch  # type: ignore[index]
                current.send(item, socks)
            elif link.channel is not None:
                link.send(item, socks)  # a KILL for one of the old forker's own children
            else:  # a dead forker's: a POOL's duplicates are closed, a KILL is moot
                for sock in socks:
                    sock.close()
        link.retire_if_done()

    # -- per connection ----------------------------------------------------------------

    def submit(  # noqa: PLR0917 - the per-connection path: no keyword dicts
        self,
        conn: socket.socket,
        info: Connection,
        peer: str,
        source: int | None,
        taken: float,
        ask: tuple[socket.socket, socket.socket] | None = None,
    ) -> None:
        """Hand ``conn`` (closed once sent) to the current forker; it counts against
        ``source`` from now until its exit is reported."""
        link = self.current
        assert link is not None
        cid = self.next_id
        self.next_id = cid + 1
        if source is not None:
            self.loop.children.counts.add(source)
        socks = [conn] if ask is None else [conn, ask[1]]
        link.launches[cid] = Launch(link, peer, source, taken, None if ask is None else ask[0])
        link.send(
            (wire.CONN, cid, info.peer, info.connnum, info.env, info.local, len(socks)), socks
        )

    def started(self, launch: Launch, pid: int) -> None:
        self.conns.started(pid, launch.peer, launch.source, launch.taken, launch.link, launch.ours)
        phase = self.loop.phase
        if phase in ("term", "kill"):  # a stop ended every child already: this one too
            self.loop.children.signal(pid, signal.SIGKILL if phase == "kill" else signal.SIGTERM)

    def failed(self, launch: Launch, number: int) -> None:
        """Fork failed in the forker, or the descriptors never got there (EMFILE)."""
        self.release(launch)
        self.conns.fork_failed(launch.peer, OSError(number, os.strerror(number)))

    def release(self, launch: Launch) -> None:
        if launch.source is not None:
            self.loop.children.counts.remove(launch.source)
        if launch.ours is not None:
            launch.ours.close()

    def read(self) -> None:
        for link in tuple(self.links):
            link.read()

    def in_flight(self) -> int:
        """Connections handed to a forker and not reported started (a dead one's
        unsent ones too, until the next forker takes them)."""
        count = sum(len(link.launches) for link in self.links)
        dead = self.dead
        return count + (len(dead.launches) if dead is not None and dead not in self.links else 0)

    def blocked(self) -> bool:
        """Whether connections must wait (stop accepting): no forker ready, or full."""
        current = self.current
        return self.needed and (current is None or current.full or not current.ready)

    def flush(self) -> None:
        """Before each wait: send what waits; watch a full channel for room."""
        if self.needed and self.current is None and not self.conns.acceptor.paused_until:
            self.respawn()
        for link in tuple(self.links):
            full = not link.flush()
            if link.channel is not None and full != link.full:
                link.full = full
                if full:
                    self.loop.log.warning("forker-full", pid=link.pid, waiting=len(link.outbox))
                self.loop.unwatch(link.channel)
                room = selectors.EVENT_WRITE if full else 0
                self.loop.watch(link.channel, link.on_readable, room)
            link.retire_if_done()

    def deadline(self) -> float | None:
        """When a starting forker's start fails without its READY."""
        dues = [link.due for link in self.links if link.due is not None]
        return min(dues) if dues else None

    def on_deadline(self, now: float) -> None:
        for link in tuple(self.links):
            if link.due is not None and now >= link.due:
                failure = f"the forker was not ready within {START_TIMEOUT:g}s"
                self.greeted(link, StartFailed(EXIT_TEMPORARY, failure))

    # -- a forker's end ----------------------------------------------------------------

    def drop_waiting(self) -> int:
        """The grace period is over (or a fast stop): connections waiting in an
        outbox, never sent to a forker, are closed and their slots released."""
        dropped, dead = 0, self.dead
        for link in [*self.links, *([dead] if dead is not None and dead not in self.links else [])]:
            for gone in link.drop():
                self.release(gone)
                dropped += 1
        if dropped:
            self.loop.log.warning("forker-dropped", waiting=dropped)
            self.loop.metrics.rejected("dropped", dropped)
        return dropped

    def lost(self, link: Link, ended: Exited) -> None:
        """A forker exited: when it was no retiring one, it died. Its children are
        ours now (we are their subreaper): they are reaped and ended as any other,
        signalled directly. What it had not reported started is lost; what it was
        not sent yet goes to the next forker."""
        link.close()
        self.links.remove(link)
        self.loop.children.orphaned(link)
        sent = [cid for cid, launch in link.launches.items() if launch.sent]
        for cid in sent:
            self.release(link.launches.pop(cid))
        if link.retiring and not sent:
            self.loop.log.debug("forker-exited", pid=link.pid, **ended.status_fields())
            return
        strays = self.loop.children.strays() if sent else []  # forked, never reported:
        for pid in strays:  # counted against no source, ended at a stop, logged peer=-
            self.loop.admission.start_lifetime(self.loop.children.add(pid, "-", None, self.conns))
        fields = {**ended.status_fields(), "lost": len(sent), "adopted": len(strays)}
        self.loop.log.warning("forker-died", pid=link.pid, **fields)
        if sent:
            self.loop.metrics.rejected("forker-lost", len(sent))
        if link is self.current:
            self.current = None
            self.dead = link  # what it was not sent yet goes to the next one
            self.respawn()

    def respawn(self) -> None:
        """A new current forker after one died (see flush: tried again after a
        pause); what the dead one was not sent waits for it."""
        if self.loop.stopping is not None and (self.dead is None or not self.dead.outbox):
            return  # nothing left to serve
        try:
            self.current = self.begin(self.recipe)
        except StartFailed as exc:
            self.loop.log.warning("forker-failed", error=str(exc))
            self.conns.acceptor.pause("forker")
            return
        if self.dead is not None:
            self.dead.retiring = True
            self.retire(self.dead)
            self.dead = None

    def close(self) -> None:
        """Close every channel; wait for each forker to exit (it has no children by
        now), SIGKILL it after EXIT_TIMEOUT (one still starting: at once)."""
        for link in self.links:
            link.watched = False  # the loop's selector is closed by now
            link.close()
        for link in self.links:
            reap_forker(link.pid)
        self.links = []
        self.current = None
