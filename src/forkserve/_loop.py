"""Fork mode's parent: accept while below --max-conns, fork a child per connection."""

from __future__ import annotations

import collections
import errno
import selectors
import signal
import socket
import time
from collections.abc import Callable

from forkserve._address import format_address
from forkserve._children import Exited
from forkserve._forking import fork_child
from forkserve._handler import Connection, Service
from forkserve._listen import ACCEPT_PAUSE, CAPACITY_ERRNOS, CONNECTION_ERRNOS, Listener
from forkserve._log import Log
from forkserve._supervise import Supervisor

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from typing import Any

# At most this many accepts per wakeup, so signals (a stop, a burst of exits) are
# looked at between batches even under a connection flood.
ACCEPT_BATCH = 64


def source_of(peer: Any) -> str:
    """The client address a connection counts against: the peer's host."""
    return peer[0] if isinstance(peer, tuple) else ""


class ForkLoop(Supervisor):
    """Fork mode: one child per connection, at most ``max_conns`` at once.

    Resource handling: the listener belongs to the caller, but the loop closes it when
    a stop begins (so the kernel refuses new clients at once, rather than queueing
    them for a server that is leaving).
    """

    def __init__(
        self,
        listener: Listener,
        service: Service,
        log: Log,
        *,
        max_conns: int,
        grace: float,
        ready: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(log, grace=grace, ready=ready)
        self.listener: Listener | None = listener
        self.service = service
        self.max_conns = max_conns
        # Connections accepted while draining at the limit: served as slots free up.
        self.pending: collections.deque[tuple[socket.socket, Any]] = collections.deque()
        self.listening = False
        self.paused_until = 0.0
        self.burst: tuple[str, int] | None = None  # (errno name, failures) while paused

    def finished(self) -> bool:
        return self.stopping is not None and not self.children and not self.pending

    def active(self) -> str:
        return f"{len(self.children)}/{self.max_conns}"

    def before_wait(self) -> None:
        """Watch the listener only while a connection could be taken now.

        At --max-conns it leaves the selector and the kernel's backlog is the queue.
        """
        listener = self.listener
        if listener is None:
            return  # closed, and close_listener() unregistered it
        want = (
            self.stopping is None
            and len(self.children) < self.max_conns
            and time.monotonic() >= self.paused_until
        )
        if want != self.listening:
            if want:
                self.sel.register(listener, selectors.EVENT_READ)
            else:
                self.sel.unregister(listener)
            self.listening = want

    def deadlines(self) -> tuple[float | None, ...]:
        return (self.paused_until or None,) if self.listener is not None else ()

    def on_deadlines(self, now: float) -> None:
        if self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0

    def on_ready(self, key: selectors.SelectorKey, mask: int) -> None:
        if self.listening and key.fileobj is self.listener:
            self.accept_batch()

    def on_exits(self, exits: list[Exited]) -> None:
        now = time.monotonic()
        for ended in exits:
            if ended.child is None:
                self.log.debug("end-unknown", pid=ended.pid, **ended.status_fields())
                continue
            fields: dict[str, object] = {"pid": ended.pid, "peer": ended.child.peer}
            fields.update(ended.status_fields())
            fields["duration"] = f"{now - ended.child.started:.3f}s"
            fields["conns"] = self.active()
            self.log.info("end", **fields)
        while self.pending and len(self.children) < self.max_conns:
            self.start_child(*self.pending.popleft())

    # -- accepting -------------------------------------------------------------------

    def accept_one(self) -> tuple[socket.socket, Any] | None:
        """Accept one connection, applying the errno policy; None when there is none.

        Raises:
            OSError: an errno no policy names: a bug, so it crashes loudly.
        """
        assert self.listener is not None
        while True:
            try:
                conn, peer = self.listener.accept()
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno in CONNECTION_ERRNOS:
                    continue
                if exc.errno in CAPACITY_ERRNOS:
                    self.pause_accepting(errno.errorcode[exc.errno])
                    return None
                raise
            if self.burst is not None:
                name, failures = self.burst
                self.log.notice("accept-resumed", after=name, failures=failures)
                self.burst = None
            return conn, peer

    def accept_batch(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if len(self.children) >= self.max_conns or self.paused_until:
                return
            accepted = self.accept_one()
            if accepted is None:
                return
            self.start_child(*accepted)

    def pause_accepting(self, reason: str) -> None:
        """Stop accepting for ACCEPT_PAUSE; log only the first failure of a burst."""
        if self.burst is None:
            self.log.warning("accept-paused", error=reason, pause=f"{ACCEPT_PAUSE}s")
            self.burst = (reason, 0)
        self.burst = (self.burst[0], self.burst[1] + 1)
        self.paused_until = time.monotonic() + ACCEPT_PAUSE

    def start_child(self, conn: socket.socket, peer: Any) -> None:
        """Fork a child for ``conn``; the parent's copy is closed either way."""
        peer_text = format_address(peer)
        source = source_of(peer)
        info = Connection(peer, self.children.open_from(source) + 1)
        service = self.service
        try:
            pid = fork_child(lambda: service(conn, info), self.close_in_child)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self.log.warning("fork-failed", peer=peer_text, error=name)
            self.pause_accepting(f"fork:{name}")
            return
        finally:
            conn.close()
        self.children.add(pid, peer_text, source)
        self.log.info("accept", peer=peer_text, pid=pid, conns=self.active())

    def close_in_child(self) -> None:
        """Undo the parent's set-up in a fresh child (see fork_child)."""
        self.sel.close()
        if self.listener is not None:
            self.listener.close()
        if self.sigs is not None:
            self.sigs.close_in_child()
        for other, _ in self.pending:
            other.close()

    # -- stopping --------------------------------------------------------------------

    def close_listener(self) -> None:
        if self.listener is None:
            return
        if self.listening:
            self.sel.unregister(self.listener)
            self.listening = False
        self.listener.close()
        self.listener = None

    def begin_graceful_stop(self, signame: str, fast: bool = False) -> None:
        """Serve what already completed its handshake, then stop accepting and drain.

        Connections waiting in the backlog are accepted until EAGAIN before the
        listener closes: closing it with them queued would reset clients that had
        connected successfully (gunicorn issue 3397). Past --max-conns they wait in
        ``pending`` for a slot, within the same grace period. A fast stop skips this.
        """
        if self.listener is not None and not fast:
            while (accepted := self.accept_one()) is not None:
                if len(self.children) < self.max_conns:
                    self.start_child(*accepted)
                else:
                    self.pending.append(accepted)
        self.close_listener()
        if not fast:
            self.log.notice(
                "stop",
                signal=signame,
                mode="graceful",
                conns=self.active(),
                queued=len(self.pending),
                grace=f"{self.grace}s",
            )

    def expire_grace(self) -> None:
        """Drop what is still queued and send SIGTERM to every child."""
        for conn, _ in self.pending:
            conn.close()
        if self.pending:
            self.log.warning("dropped", queued=len(self.pending))
            self.pending.clear()
        if self.children:
            self.log.notice("terminate", signal="SIGTERM", children=len(self.children))
        self.children.signal_all(signal.SIGTERM)
