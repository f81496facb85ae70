"""The metrics endpoint's socket policy, turn by turn, on real loopback sockets."""

from __future__ import annotations

import errno
import os
import select
import selectors
import socket
from collections.abc import Iterator

import pytest

from forkserve._log import Log
from forkserve.parent.endpoint import CLIENT_TIMEOUT, MAX_CLIENTS, REQUEST_TIMEOUT, MetricsEndpoint
from forkserve.parent.listeners import ACCEPT_PAUSE, Listener
from tests.support import connect, recv_all

REQUEST = b"GET /healthz HTTP/1.0\r\n\r\n"


class FailingListener(Listener):
    """A real listener whose next ``failures`` accepts fail with ``error``."""

    def __init__(self, sock: socket.socket, error: int, failures: int) -> None:
        super().__init__(sock)
        self.error = error
        self.failures = failures

    def accept(self) -> tuple[socket.socket, object]:
        if self.failures:
            self.failures -= 1
            raise OSError(self.error, os.strerror(self.error))
        return super().accept()


class Harness:
    """An endpoint in a selector of its own, answering every request with ``answer``,
    logging into a pipe."""

    def __init__(self, listener: Listener, answer: bytes = b"answer") -> None:
        self.sel = selectors.DefaultSelector()
        self.log_r, log_w = os.pipe()
        os.set_blocking(self.log_r, False)
        self.log_w = log_w
        self.endpoint = MetricsEndpoint(listener)
        self.endpoint.serve(lambda data: answer, Log(fd=log_w))
        self.endpoint.attach(self.sel)
        self.port = listener.port

    def turn(self, timeout: float = 5.0) -> None:
        """One turn of a loop like the supervisor's: every ready callback."""
        for key, mask in self.sel.select(timeout):
            key.data(mask)

    def until_readable(self, sock: socket.socket) -> None:
        """Turns of the loop until ``sock`` has something to read (at most 20)."""
        for _ in range(20):
            if select.select([sock], [], [], 0)[0]:
                return
            self.turn(0.5)
        raise AssertionError("no answer after 20 turns")

    def log(self) -> str:
        try:
            return os.read(self.log_r, 65536).decode()
        except BlockingIOError:
            return ""

    def close(self) -> None:
        self.endpoint.close()
        self.sel.close()
        os.close(self.log_r)
        os.close(self.log_w)


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness(Listener.bind("127.0.0.1", 0, 64))
    yield h
    h.close()


def fill(h: Harness, count: int) -> list[socket.socket]:
    """``count`` silent clients, all accepted."""
    clients = [connect(h.port) for _ in range(count)]
    while len(h.endpoint.clients) < count:
        h.turn()
    return clients


def test_a_full_endpoint_answers_the_oldest_before_taking_its_place(harness: Harness) -> None:
    silent = fill(harness, MAX_CLIENTS)
    # The oldest's request is in its socket, not yet read: the listener's event is
    # handled first, and the place it gives up is given only after it is answered.
    silent[0].sendall(REQUEST)
    newcomer = connect(harness.port)
    newcomer.sendall(REQUEST)
    harness.endpoint.on_listener(selectors.EVENT_READ)
    assert recv_all(silent[0]).endswith(b"answer")
    harness.until_readable(newcomer)
    assert recv_all(newcomer).endswith(b"answer")
    assert len(harness.endpoint.clients) == MAX_CLIENTS - 1
    for sock in [*silent, newcomer]:
        sock.close()


def test_silent_clients_give_their_place_to_new_ones(harness: Harness) -> None:
    silent = fill(harness, MAX_CLIENTS)
    newcomer = connect(harness.port)
    newcomer.sendall(REQUEST)
    harness.until_readable(newcomer)
    assert recv_all(newcomer).endswith(b"answer")
    assert recv_all(silent[0]) == b""  # the oldest was closed to make room
    for sock in [*silent, newcomer]:
        sock.close()


def test_clients_accepted_in_the_same_turn_are_not_evicted(harness: Harness) -> None:
    clients = [connect(harness.port) for _ in range(MAX_CLIENTS + 4)]
    harness.endpoint.on_listener(selectors.EVENT_READ)
    first = list(harness.endpoint.clients.values())
    assert len(first) == MAX_CLIENTS  # the other 4 wait in the kernel's queue
    harness.endpoint.on_listener(selectors.EVENT_READ)  # the next turn
    now = list(harness.endpoint.clients.values())
    assert len(now) == MAX_CLIENTS
    assert now[: MAX_CLIENTS - 4] == first[4:]  # the 4 oldest made room for the rest
    for sock in clients:
        sock.close()


def test_a_request_has_less_time_than_an_answer() -> None:
    # An answer far larger than a socket's buffers, to a client that does not read.
    h = Harness(Listener.bind("127.0.0.1", 0, 16), answer=b"x" * (64 << 20))
    try:
        silent, slow = fill(h, 2)
        slow.sendall(REQUEST)
        quiet, answering = h.endpoint.clients.values()
        while answering.deadline == answering.accepted + REQUEST_TIMEOUT:
            h.turn()
        assert answering.deadline == answering.accepted + CLIENT_TIMEOUT
        assert quiet.deadline == quiet.accepted + REQUEST_TIMEOUT
        assert h.endpoint.deadline() == quiet.deadline
        h.endpoint.on_deadline(quiet.accepted + REQUEST_TIMEOUT)
        assert list(h.endpoint.clients.values()) == [answering]
        assert recv_all(silent) == b""
        h.endpoint.on_deadline(answering.accepted + CLIENT_TIMEOUT)
        assert not h.endpoint.clients
        silent.close()
        slow.close()
    finally:
        h.close()


def test_out_of_descriptors_the_listener_pauses_and_logs_once() -> None:
    listener = FailingListener(Listener.bind("127.0.0.1", 0, 16).sock, errno.EMFILE, 3)
    h = Harness(listener)
    try:
        client = connect(h.port)
        client.sendall(REQUEST)
        for _ in range(3):
            h.endpoint.on_listener(selectors.EVENT_READ)
            # Out of the selector: a readable listener would wake the loop at once.
            assert listener not in [key.fileobj for key in h.sel.get_map().values()]
            until = h.endpoint.deadline()
            assert until == h.endpoint.paused_until
            h.endpoint.on_deadline(until - ACCEPT_PAUSE / 2)
            assert not h.endpoint.watching  # not before the pause is over
            h.endpoint.on_deadline(until)
            assert h.endpoint.watching
        h.until_readable(client)
        assert recv_all(client).endswith(b"answer")
        log = h.log()
        assert log.count("metrics-accept-paused error=EMFILE") == 1
        assert "metrics-accept-resumed after=EMFILE failures=3" in log
        client.close()
    finally:
        h.close()


def test_an_unknown_accept_error_is_a_bug() -> None:
    listener = FailingListener(Listener.bind("127.0.0.1", 0, 16).sock, errno.EBADF, 1)
    h = Harness(listener)
    try:
        with pytest.raises(OSError) as raised:
            h.endpoint.on_listener(selectors.EVENT_READ)
        assert raised.value.errno == errno.EBADF
    finally:
        h.close()
