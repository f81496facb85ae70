"""The ``--metrics`` endpoint: a tiny HTTP/1.0 server inside the parent's own loop.

The parent never runs threads (a fork while another thread holds a lock deadlocks the
child), so the endpoint is a few non-blocking sockets in the supervisor's selector.
A slow or malicious scraper must never hold the parent up: reads and writes never
block, a request is at most MAX_REQUEST bytes, each client has CLIENT_TIMEOUT seconds
in all, and at most MAX_CLIENTS are served at once (beyond that the listener leaves
the selector and the kernel queues them, as for the service itself).
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import time
from collections.abc import Callable

from forkserve._listen import CAPACITY_ERRNOS, CONNECTION_ERRNOS, Listener
from forkserve._metrics import MAX_REQUEST, request_complete

CLIENT_TIMEOUT = 5.0
MAX_CLIENTS = 8
BACKLOG = 16


class Client:
    """One scrape: the request read so far, then the response left to send."""

    __slots__ = ("deadline", "inbox", "outbox", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inbox = b""
        self.outbox = memoryview(b"")


class MetricsEndpoint:
    """Serves ``respond(request) -> response`` to HTTP clients from a selector.

    Args:
        listener: the bound, listening socket (``Listener.bind`` or inherited).
        respond: turns a complete request (or an oversized one) into the response.

    Resource handling: owns the listener and every client socket; ``close()`` closes
    them all, ``close_in_child()`` closes the descriptors in a forked child.
    Error handling: a client's socket errors end that client only.
    """

    def __init__(self, listener: Listener, respond: Callable[[bytes], bytes] | None = None) -> None:
        self.listener = listener
        self.respond: Callable[[bytes], bytes] = respond or (lambda data: b"")
        self.clients: dict[int, Client] = {}
        self.sel: selectors.BaseSelector | None = None
        self.watching = False

    def describe(self) -> str:
        return self.listener.describe()

    def attach(self, sel: selectors.BaseSelector) -> None:
        """Start serving from ``sel``: callbacks are the selector keys' data."""
        self.sel = sel
        self.watch(True)

    def watch(self, on: bool) -> None:
        if self.sel is not None and on != self.watching:
            if on:
                self.sel.register(self.listener, selectors.EVENT_READ, self.on_listener)
            else:
                self.sel.unregister(self.listener)
            self.watching = on

    def on_listener(self, mask: int) -> None:
        assert self.sel is not None
        while len(self.clients) < MAX_CLIENTS:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in CONNECTION_ERRNOS or exc.errno in CAPACITY_ERRNOS:
                    return  # the scraper retries; the service matters more
                raise
            sock.setblocking(False)
            client = Client(sock, time.monotonic() + CLIENT_TIMEOUT)
            self.clients[sock.fileno()] = client
            self.sel.register(sock, selectors.EVENT_READ, lambda m, c=client: self.on_client(c))
        self.watch(False)

    def on_client(self, client: Client) -> None:
        if self.clients.get(client.sock.fileno()) is not client:
            return  # dropped earlier in the same turn of the loop
        try:
            if not client.outbox:
                self.read(client)
            if client.outbox:
                self.write(client)
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                raise
            self.drop(client)

    def read(self, client: Client) -> None:
        data = client.sock.recv(MAX_REQUEST + 1 - len(client.inbox))
        client.inbox += data
        if request_complete(client.inbox) or len(client.inbox) > MAX_REQUEST:
            client.outbox = memoryview(self.respond(client.inbox))
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
            self.watch(True)

    def deadline(self) -> float | None:
        return min((c.deadline for c in self.clients.values()), default=None)

    def on_deadline(self, now: float) -> None:
        for client in [c for c in self.clients.values() if c.deadline <= now]:
            self.drop(client)

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
