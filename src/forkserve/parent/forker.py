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
  full, what is not sent waits in ``outbox`` (in order, never dropped), the model
  stops accepting (the backlog is the queue), and the channel is watched for room.
- Signals to connections' processes go through their forker, which is their parent
  and so can never hit a reused pid.
- The supervisor is a child subreaper: if a forker dies, its children become the
  supervisor's, and are reaped and ended as any other; a new forker takes over, and
  what was not yet sent goes to it. Connections the dead forker had received but not
  reported started are lost (logged ``forker-lost``; their slots free).
- A reload starts a new forker for the new settings; the old one is kept until its
  children end (``retire``), then its channel closes and it exits.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket

from forkserve.forker import wire
from forkserve.parent.forkerstart import StartFailed, become_subreaper, reap_forker, spawn

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from typing import Any

    from forkserve.child.connection import Connection
    from forkserve.parent.children import Exited
    from forkserve.parent.forkmodel import Connections
    from forkserve.parent.loop import Loop


# Reloadable settings the forker does not hold: a reload that changes only these
# keeps it (setting keys, as config.reload names them).
SUPERVISOR_ONLY = frozenset({"grace", "upgrade-timeout", "max-conns"})


class Launch:
    """A connection handed to a forker and not yet reported started."""

    __slots__ = ("link", "ours", "peer", "sent", "source", "taken")

    def __init__(self, link: Link, peer: str, source: int | None, taken: float, ours: Any) -> None:
        self.link = link
        self.peer = peer
        self.source = source
        self.taken = taken
        self.ours = ours  # behind the PROXY protocol: our end of the question channel
        self.sent = False


class Link:
    """One forker process as the supervisor sees it: its channel, what waits to be
    sent, what it was sent and has not reported started, and its children's count.

    Resource handling: owns the channel (in the loop's selector while open) and the
    sockets in ``outbox`` until they are sent; the forker process is in the loop's
    child table as this object's (``on_exit``).
    """

    __slots__ = (
        "channel",
        "children",
        "engine",
        "full",
        "launches",
        "outbox",
        "pid",
        "retiring",
        "watched",
    )

    def __init__(self, engine: Forkers, pid: int, channel: socket.socket) -> None:
        self.engine = engine
        self.pid = pid
        self.channel: socket.socket | None = channel
        self.outbox: list[tuple[tuple[object, ...], list[socket.socket]]] = []
        self.launches: dict[int, Launch] = {}
        self.children = 0
        self.retiring = False
        self.watched = False
        self.full = False  # the channel had no room: watched for writability

    def send(self, item: tuple[object, ...], fds: list[socket.socket]) -> None:
        self.outbox.append((item, fds))

    def flush(self) -> bool:
        """Send what waits, a batch per record; False while the channel is full."""
        channel = self.channel
        if channel is None:
            return True
        outbox = self.outbox
        while outbox:
            batch = outbox[: wire.MAX_BATCH]
            fds = [sock.fileno() for _, socks in batch for sock in socks]
            try:
                socket.send_fds(channel, [wire.encode([item for item, _ in batch])], fds)
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno == errno.ETOOMANYREFS:  # descriptors in flight: the rlimit
                    self.engine.conns.acceptor.pause("forker:ETOOMANYREFS")
                    return False
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    return False  # the forker died: its exit hands this on
                raise
            del outbox[: len(batch)]
            for item, socks in batch:
                for sock in socks:
                    sock.close()
                if item[0] in wire.LAUNCHES:
                    self.launches[item[1]].sent = True  # type: ignore[index]
        return True

    def on_readable(self, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self.read()
        if mask & selectors.EVENT_WRITE:
            self.engine.flush()

    def read(self) -> None:
        """Every report waiting: started, exited, fork failed, descriptors lost."""
        channel = self.channel
        engine = self.engine
        while channel is not None:
            try:
                record = channel.recv(wire.RECORD_SIZE)
            except BlockingIOError:
                return
            except ConnectionResetError:
                record = b""
            if not record:
                return  # the forker is gone: its exit says the rest (on_exit)
            exits: list[Exited] = []
            for item in wire.decode(record):
                kind = item[0]
                if kind == wire.EXITED:
                    self.children -= 1
                    exits.append(engine.loop.children.ended(item[1], item[2]))  # type: ignore[arg-type]
                elif kind == wire.STARTED:
                    self.children += 1
                    engine.started(self.launches.pop(item[1]), item[2])  # type: ignore[call-overload, arg-type]
                else:  # NOFORK, LOST
                    engine.failed(self.launches.pop(item[1]), item[2])  # type: ignore[call-overload, arg-type]
            if exits:
                engine.loop.hand_exits(exits, engine.loop.clock())
        self.retire_if_done()

    def retire_if_done(self) -> None:
        """An old forker (after a reload) with nothing left: close its channel, so
        it exits (reaped as any child)."""
        if self.retiring and not self.children and not self.launches and not self.outbox:
            self.close()

    def kill(self, pid: int, sig: int) -> None:
        """Signal child ``pid``'s process group, through this forker (its parent)."""
        self.send((wire.KILL, pid, int(sig)), [])

    def signal_process(self, pid: int, sig: int) -> None:
        """Signal child ``pid`` alone (a prefork worker: see prefork.forked)."""
        self.send((wire.SIGNAL, pid, int(sig)), [])

    def close(self) -> None:
        if self.channel is not None:
            if self.watched:
                self.engine.loop.unwatch(self.channel)
            self.channel.close()
            self.channel = None

    def on_exit(self, ended: Exited, now: float) -> None:
        """The forker process was reaped."""
        self.read()  # what it reported just before it died counts first
        self.engine.lost(self, ended)


class Forkers:
    """The forkers of fork mode: the current one, and old ones draining after a
    reload or a forker's death. Held by ``Connections``.

    Resource handling: ``close()`` (at the loop's end) closes every channel and waits
    EXIT_TIMEOUT for each forker to exit, then SIGKILLs it.
    """

    __slots__ = ("conns", "current", "dead", "links", "loop", "next_id", "recipe")

    def __init__(self, loop: Loop, conns: Connections, recipe: bytes) -> None:
        self.loop = loop
        self.conns = conns
        self.recipe = recipe
        self.current: Link | None = None
        self.dead: Link | None = None  # the current forker, died, until one replaces it
        self.links: list[Link] = []
        self.next_id = 0

    def start(self) -> None:
        """Start the current forker (blocking until it is ready, as a start-up step).

        Raises:
            StartFailed: it did not start (see spawn).
        """
        if not self.links:
            become_subreaper()
        pid, channel = spawn(self.recipe)
        link = Link(self, pid, channel)
        self.loop.children.adopt(pid, link)
        self.loop.watch(channel, link.on_readable)
        link.watched = True
        self.links.append(link)
        self.current = link
        self.loop.log.debug("forker", pid=pid)

    def replace(self, recipe: bytes, changed: frozenset[str]) -> None:
        """A reload: a new forker for new connections, when it holds a setting that
        ``changed``; the old one retires once its children have ended.

        Raises:
            StartFailed: the new forker did not start; the old one serves on.
        """
        if not changed - SUPERVISOR_ONLY:
            return
        old, self.recipe = self.current, recipe
        try:
            self.start()
        except StartFailed:
            self.current = old
            raise
        if old is not None:
            self.retire(old)

    def retire(self, link: Link) -> None:
        link.retiring = True
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
        return sum(len(link.launches) for link in self.links)

    def blocked(self) -> bool:
        """Whether the current forker's channel is full (stop accepting)."""
        return self.current is None or self.current.full

    def flush(self) -> None:
        """Before each wait: send what waits; watch a full channel for room."""
        if self.current is None and not self.conns.acceptor.paused_until:
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

    # -- a forker's end ----------------------------------------------------------------

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
        self.loop.log.warning("forker-died", pid=link.pid, **ended.status_fields(), lost=len(sent))
        if sent:
            self.loop.metrics.rejected("forker-lost", len(sent))
        if link is self.current:
            self.current = None
            self.dead = link  # what it was not sent yet goes to the next one
            self.respawn()

    def respawn(self) -> None:
        """A new current forker after one died (see flush: tried again after a pause)."""
        if self.loop.stopping is not None and (self.dead is None or not self.dead.outbox):
            return  # nothing left to serve
        try:
            self.start()
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
        now), SIGKILL it after EXIT_TIMEOUT."""
        for link in self.links:
            link.watched = False  # the loop's selector is closed by now
            link.close()
        for link in self.links:
            reap_forker(link.pid)
        self.links = []
        self.current = None
