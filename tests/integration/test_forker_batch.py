"""A burst of connections reaches the forker as one record (parent.forker batches
them): each process it forks holds its own connection, none of the others'."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from tests.integration.conftest import ServerFactory
from tests.soak.scenarios import CHAOS
from tests.support import WAIT, ServerProcess, connect, recv_exactly, wait_until


def sockets_of(pid: int) -> list[str]:
    fds = Path(f"/proc/{pid}/fd")
    links = [os.readlink(fds / fd) for fd in os.listdir(fds)]
    return [link for link in links if link.startswith("socket:")]


def one_record(server: ServerProcess) -> tuple[socket.socket, socket.socket]:
    """Two clients connected while the supervisor is stopped: once it runs again it
    accepts both in one turn, and hands them to the forker in one record."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        return connect(server.port), connect(server.port)
    finally:
        os.kill(server.pid, signal.SIGCONT)


def test_a_child_holds_only_its_own_connection(start_server: ServerFactory) -> None:
    """The first child of a batch held none of the later ones' sockets: a connection
    whose own process ended without a shutdown (a handler that raised) got no FIN
    until that sibling ended too."""
    server = start_server("--handler", CHAOS)
    wait_until(server.forkers, what="a forker")
    # Stopped, the supervisor accepts both clients in one turn once it runs again:
    # one record to the forker, the held client's first.
    held, raising = one_record(server)
    try:
        held.sendall(b"Hx")
        assert recv_exactly(held, 1) == b"x"
        accepts = server.wait_event("accept", 2)
        host, port = held.getsockname()[:2]
        peer = f"{host}:{port}"
        (pid,) = [int(a["pid"]) for a in accepts if a["peer"] == peer]
        assert len(sockets_of(pid)) == 1, sockets_of(pid)
        raising.sendall(b"R")
        raising.settimeout(WAIT / 3)
        assert raising.recv(1) == b""  # the FIN of its process's end
        server.wait_event("end", exit="1")
    finally:
        held.close()
        raising.close()
    server.wait_event("end", 2)
    assert server.lasting_zombies() == []


def test_the_question_channel_is_only_its_childs(start_server: ServerFactory) -> None:
    """Behind the PROXY protocol each record carries two descriptors per connection
    (the socket and the question channel): neither reaches a sibling."""
    server = start_server("--proxy-protocol", "v1", "--handler", CHAOS)
    wait_until(server.forkers, what="a forker")
    first, second = one_record(server)
    try:
        for sock, port in ((first, 1001), (second, 1002)):
            sock.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 %d 80\r\nHx" % port)
            assert recv_exactly(sock, 1) == b"x"
        accepts = server.wait_event("accept", 2)
        for accept in accepts:
            pid = int(accept["pid"])
            # its connection and its question channel (closed once answered, or not)
            assert len(sockets_of(pid)) <= 2, (accept, sockets_of(pid))
    finally:
        first.close()
        second.close()
    server.wait_event("end", 2)


def test_a_prefork_worker_holds_only_its_own_question_channel(
    start_server: ServerFactory,
) -> None:
    """Prefork: the pool's first workers go to the forker in one record, each WORKER
    item with its question channel (--per-ip): each worker holds its own, none of
    its later siblings'."""
    server = start_server("-v", "--mode", "prefork", "--per-ip", "5", "--min-spare", "6")
    pids = [int(s["pid"]) for s in server.wait_event("worker-start", count=6)]

    def alike() -> bool:  # a worker reports its start before it closes what is not its
        return len({len(sockets_of(pid)) for pid in pids}) == 1

    wait_until(alike, what="every worker to hold the same sockets, whatever its order")
    assert server.stop() == 0
