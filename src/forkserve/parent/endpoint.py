"""The ``--metrics`` endpoint: a tiny HTTP/1.0 server inside the parent's own loop.

The parent never runs threads (a fork while another thread holds a lock deadlocks the
child), so the endpoint is a few non-blocking sockets in the supervisor's selector.
A slow or malicious client must never hold the parent up, nor keep a balancer's health
check waiting:

- reads and writes never block, and a request is at most MAX_REQUEST bytes;
- a client has REQUEST_TIMEOUT seconds to send its request and CLIENT_TIMEOUT in all;
  a scraper or a health check sends its request right after connecting;
- at most MAX_CLIENTS are held at once, and a new connection takes the oldest one's
  place (after that one is given a last chance to be answered), as nginx reuses its
  idle connections when it runs out (``ngx_drain_connections``). A queue of silent
  connections is gone through in a few turns of the loop, never one timeout at a time:
  an attacker holding every slot delays a health check by a turn, not by seconds;
- at most MAX_CLIENTS are accepted per turn of the loop, so signals and the service
  are looked at between batches, and a client is never evicted in the turn it came
  in (the loop reads it first);
- out of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM), the listener leaves the selector
  for ACCEPT_PAUSE and the first failure of the burst is logged, as the service's
  listener does: a readable listener that cannot be accepted from would spin the
  parent at 100% CPU.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from collections.abc import Callable

from forkserve.core.errnames import errno_name
from forkserve.core.metrics import MAX_REQUEST, request_complete
from forkserve.parent.listeners import (
    ACCEPT_BACK_OFF,
    ACCEPT_PAUSE,
    ACCEPT_RETRY,
    Listener,
    accept_action,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from forkserve._log import Log

# From accept to a whole request head: a scraper sends it with or just after the
# handshake's last ACK; 2 s leaves room for one lost segment (the first RTO is 1 s,
# RFC 6298 section 2).
REQUEST_TIMEOUT = 2.0
# From accept to the response's last byte (a few KB, which fits in the send buffer).
CLIENT_TIMEOUT = 5.0
MAX_CLIENTS = 16
# Errors that end one client, not the endpoint.
CLIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT})


class Client:
    """One request: what was read so far, then the response left to send."""

    __slots__ = ("accepted", "deadline", "inbox", "outbox", "sock")

    def __init__(self, sock: socket.socket, accepted: float) -> None:
        self.sock = sock
        self.accepted = accepted
        self.deadline = accepted + REQUEST_TIMEOUT
        self.inbox = b""
        self.outbox = memoryview(b"")


class MetricsEndpoint:
    """Serves ``respond(request) -> response`` to HTTP clients from a selector.

    Args:
        listener: the bound, listening socket (``Listener.bind`` or inherited).

    Resource handling: owns the listener and every client socket; ``close()`` closes
    them all, ``close_in_child()`` closes the descriptors in a forked child.
    Error handling: a client's socket errors end that client only; accept(2) errors
    follow the service listener's policy (see parent.listeners), with their own log events,
    ``metrics-accept-paused`` and ``metrics-accept-resumed``.
    """

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.respond: Callable[[bytes], bytes] = lambda data: b""
        self.log: Log | None = None
        # Oldest first (a dict keeps insertion order): the first is the one to evict.
        self.clients: dict[int, Client] = {}
        self.sel: selectors.BaseSelector | None = None
        self.watching = False
        self.paused_until = 0.0
        self.burst: tuple[str, int] | None = None  # (errno name, failures) while paused

    def describe(self) -> str:
        return self.listener.describe()

    def serve(self, respond: Callable[[bytes], bytes], log: Log) -> None:
        """Answer each complete request with ``respond``; log accept pauses to ``log``."""
        self.respond = respond
        self.log = log

    def attach(self, sel: selectors.BaseSelector) -> None:
        """Start serving from ``sel``: callbacks are the selector keys' data."""
        self.sel = sel
        self.watch(not self.paused_until)

    def watch(self, on: bool) -> None:
        if self.sel is not None and on != self.watching:
            if on:
                self.sel.register(self.listener, selectors.EVENT_READ, self.on_listener)
            else:
                self.sel.unregister(self.listener)
            self.watching = on

    # -- accepting ----------------------------------------------------------------------

    def on_listener(self, mask: int) -> None:
        """Accept up to MAX_CLIENTS, each in the place of the oldest client when full.

        With at most MAX_CLIENTS held and accepted per turn, the oldest is always one
        of an earlier turn, which the loop has had a chance to read.
        """
        assert self.sel is not None
        for _ in range(MAX_CLIENTS):
            sock = self.accept()
            if sock is None:
                return
            if len(self.clients) >= MAX_CLIENTS:
                self.make_room()
            client = Client(sock, time.monotonic())
            self.clients[sock.fileno()] = client
            # Read from the next turn on, not now: what else was ready in this turn
            # (a prefork worker's report, a reaped child) is counted before a scrape
            # is answered.
            self.sel.register(sock, selectors.EVENT_READ, lambda m, c=client: self.on_client(c))

    def make_room(self) -> None:
        """Free the oldest client's place: answered if its request is in, else closed."""
        oldest = next(iter(self.clients.values()))
        self.on_client(oldest)
        self.drop(oldest)  # a no-op if it was just answered

    def accept(self) -> socket.socket | None:
        """One connection, non-blocking; None when none is waiting or accept failed.

        Raises:
            OSError: an errno no policy names: a bug, so it crashes loudly.
        """
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return None
        except OSError as exc:
            action = accept_action(exc.errno)
            if action == ACCEPT_BACK_OFF:
                self.pause(errno_name(exc.errno))
                return None
            if action == ACCEPT_RETRY:
                return None  # that one is gone; the listener says if more wait
            raise
        if self.burst is not None:
            name, failures = self.burst
            if self.log is not None:
                self.log.notice("metrics-accept-resumed", after=name, failures=failures)
            self.burst = None
        sock.setblocking(False)
        return sock

    def pause(self, reason: str) -> None:
        """Out of a resource: leave the selector for ACCEPT_PAUSE; log once per burst."""
        if self.burst is None:
            if self.log is not None:
                self.log.warning("metrics-accept-paused", error=reason, pause=f"{ACCEPT_PAUSE}s")
            self.burst = (reason, 0)
        self.burst = (self.burst[0], self.burst[1] + 1)
        self.paused_until = time.monotonic() + ACCEPT_PAUSE
        self.watch(False)

    # -- clients ------------------------------------------------------------------------

    def on_client(self, client: Client) -> None:
        if self.clients.get(client.sock.fileno()) is not client:
            return  # dropped earlier in the same turn of the loop
        try:
            if not client.outbox:
                self.read(client)
            if client.outbox:
                self.write(client)
        except OSError as exc:
            if exc.errno not in CLIENT_ERRNOS:
                raise
            self.drop(client)

    def read(self, client: Client) -> None:
        try:
            data = client.sock.recv(MAX_REQUEST + 1 - len(client.inbox))
        except BlockingIOError:
            return
        client.inbox += data
        if request_complete(client.inbox) or len(client.inbox) > MAX_REQUEST:
            client.outbox = memoryview(self.respond(client.inbox))
            client.deadline = client.accepted + CLIENT_TIMEOUT
            assert self.sel is not None
            self.sel.modify(client.sock, selectors.EVENT_WRITE, self.sel.get_key(client.sock).data)
        elif not data:
            self.drop(client)  # closed before a whole request

    def write(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except BlockingIOError:
            return
        client.outbox = client.outbox[sent:]
        if not client.outbox:
            self.drop(client)

    def drop(self, client: Client) -> None:
        if self.clients.pop(client.sock.fileno(), None) is not None:
            assert self.sel is not None
            self.sel.unregister(client.sock)
            client.sock.close()

    # -- timers -------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """The nearest client deadline, or the end of an accept pause."""
        soonest = min((c.deadline for c in self.clients.values()), default=None)
        if self.paused_until and (soonest is None or self.paused_until < soonest):
            return self.paused_until
        return soonest

    def on_deadline(self, now: float) -> None:
        for client in [c for c in self.clients.values() if c.deadline <= now]:
            self.drop(client)
        if self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0
            self.watch(True)

    def close_in_child(self) -> None:
        """In a forked child: close every descriptor, touching no object state."""
        os.close(self.listener.fileno())
        for fd in self.clients:
            os.close(fd)

    def close(self) -> None:
        for client in list(self.clients.values()):
            self.drop(client)
        self.watch(False)
        self.listener.close()
