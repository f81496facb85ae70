"""One forker as the supervisor sees it (``Link``), and a connection handed to it and
not yet reported started (``Launch``); see parent.forker for the whole engine.

A link is "starting" (``ready`` False) from its process's posix_spawn until its first
record, READY or its one-line error, which the loop reads like any other: the
supervisor never waits for a forker after start-up. While starting, what is handed
to it waits in its ``outbox``; its start fails if no READY comes by ``due``.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket

from forkserve.forker import wire
from forkserve.parent.forkerstart import greeting

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from typing import Any

    from forkserve.parent.children import Exited
    from forkserve.parent.forker import Forkers


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
    child table as this object's (``on_exit``). Closing a link whose forker never
    said READY SIGKILLs it (not reaped yet: never a reused pid).
    """

    __slots__ = (
        "channel",
        "children",
        "due",
        "engine",
        "exited",
        "full",
        "launches",
        "outbox",
        "pid",
        "ready",
        "retiring",
        "watched",
    )

    def __init__(
        self, engine: Forkers, pid: int, channel: socket.socket, due: float | None = None
    ) -> None:
        self.engine = engine
        self.pid = pid
        self.channel: socket.socket | None = channel
        self.outbox: list[tuple[tuple[object, ...], list[socket.socket]]] = []
        self.launches: dict[int, Launch] = {}
        self.children = 0
        self.retiring = False
        self.watched = False
        self.full = False  # the channel had no room: watched for writability
        self.due = due  # starting: when its start fails without a READY (monotonic)
        self.ready = due is None
        self.exited = False

    def send(self, item: tuple[object, ...], fds: list[socket.socket]) -> None:
        self.outbox.append((item, fds))

    def flush(self) -> bool:
        """Send what waits, a batch per record; False while the channel is full."""
        channel = self.channel
        if channel is None or not self.ready:
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
        """Every record waiting: its greeting (READY or why not), then its reports:
        started, exited, fork failed, descriptors lost."""
        engine = self.engine
        while (channel := self.channel) is not None:
            try:
                record = channel.recv(wire.RECORD_SIZE)
            except BlockingIOError:
                return
            except ConnectionResetError:
                record = b""
            if not self.ready:
                engine.greeted(self, greeting(record))
                continue
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

    def drop(self) -> list[Launch]:
        """Close the connections waiting in the outbox, never sent (a stop's end);
        return them (their counts are the engine's to release). KILLs stay."""
        dropped, kept = [], []
        for item, socks in self.outbox:
            if item[0] not in wire.LAUNCHES:  # a KILL, a SIGNAL, a POOL
                kept.append((item, socks))
                continue
            dropped.append(self.launches.pop(item[1]))  # type: ignore[call-overload]
            for sock in socks:
                sock.close()
        self.outbox = kept
        return dropped

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
        if not self.ready and not self.exited:
            # Still importing (a handler slow to load): nothing of it is needed.
            os.kill(self.pid, signal.SIGKILL)
            self.exited = True  # never signalled again

    def on_exit(self, ended: Exited, now: float) -> None:
        """The forker process was reaped."""
        self.exited = True  # reaped: its pid is no longer ours to signal
        self.read()  # what it reported just before it died counts first
        self.engine.lost(self, ended)
