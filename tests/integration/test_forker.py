"""Fork mode's forker (parent.forker, forker.process): its own failure modes.

The forker is the process that forks connections' processes; the supervisor admits,
logs and counts. These tests kill it, stop it, starve it of descriptors, and make the
handler fail to import in it alone, and check that no connection is lost that the
supervisor still held, nothing is left behind, and the counts come back to zero.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
from pathlib import Path

from tests.integration.conftest import ServerFactory
from tests.support import (
    WAIT,
    ServerProcess,
    connect,
    echo_roundtrip,
    recv_exactly,
    run_cli,
    wait_until,
)


def echoes(sock: socket.socket, payload: bytes = b"ping") -> bool:
    sock.sendall(payload)
    return recv_exactly(sock, len(payload)) == payload


def one_forker(server: ServerProcess) -> int:
    forkers = wait_until(server.forkers, what="a forker")
    assert len(forkers) == 1, forkers
    return int(forkers[0])


def fill_the_channel(server: ServerProcess, clients: list[socket.socket]) -> None:
    """With the forker stopped (SIGSTOP): connect clients (each sends one byte, each
    appended to ``clients``) until the supervisor says its channel is full."""
    for _ in range(2500):
        sock = connect(server.port)
        sock.sendall(b"x")
        clients.append(sock)
        if server.events("forker-full"):
            break
    assert server.events("forker-full"), "the channel never filled"


def test_connections_are_forked_by_the_forker(start_server: ServerFactory) -> None:
    server = start_server()
    forker = one_forker(server)
    with connect(server.port) as sock:
        assert echoes(sock)
        accepted = server.wait_event("accept")[0]
        pid = int(accepted["pid"])
        assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(forker)
    end = server.wait_event("end", pid=pid)[0]
    assert end["exit"] == "0"
    assert end["conns"] == "0/1000"


def test_forker_killed_under_load(start_server: ServerFactory) -> None:
    """SIGKILL to the forker: its children become the supervisor's (a subreaper),
    go on serving, are reaped and logged; a new forker serves the next clients."""
    server = start_server("--per-ip", "50")
    old = one_forker(server)
    held = [connect(server.port) for _ in range(8)]
    try:
        for sock in held:
            assert echoes(sock)
        server.wait_event("accept", len(held))
        os.kill(old, signal.SIGKILL)
        died = server.wait_event("forker-died", pid=old)[0]
        assert died["signal"] == "SIGKILL(9)"
        # The orphans still serve their clients.
        for sock in held:
            assert echoes(sock)
        new = one_forker(server)
        assert new != old
        for _ in range(20):
            assert echo_roundtrip(server.port, b"after") == b"after"
    finally:
        for sock in held:
            sock.close()
    # Every held connection ends with its own line, reaped by the supervisor, and
    # every count comes back: the per-IP limit lets 50 more in at once.
    server.wait_event("end", len(held) + 20)
    assert not server.zombies()
    fresh = [connect(server.port) for _ in range(50)]
    try:
        for sock in fresh:
            assert echoes(sock)
    finally:
        for sock in fresh:
            sock.close()
    server.wait_event("end", len(held) + 70)
    assert server.events("end")[-1]["conns"] == "0/1000"
    assert server.stop() == 0


def test_forker_channel_full(start_server: ServerFactory) -> None:
    """A stopped forker: the supervisor's channel fills; it stops accepting (the
    backlog queues) and loses nothing; once the forker runs again all are served."""
    server = start_server("--max-conns", "3000", "--backlog", "4096")
    forker = one_forker(server)
    os.kill(forker, signal.SIGSTOP)
    clients: list[socket.socket] = []
    try:
        fill_the_channel(server, clients)
        clients.extend(connect(server.port) for _ in range(20))  # into the backlog
        for sock in clients[-20:]:
            sock.sendall(b"x")
        os.kill(forker, signal.SIGCONT)
        for sock in clients:
            assert recv_exactly(sock, 1) == b"x"
    finally:
        os.kill(forker, signal.SIGCONT)
        for sock in clients:
            sock.close()
    server.wait_event("end", len(clients), timeout=2 * WAIT)
    assert server.events("end")[-1]["conns"] == "0/3000"


def test_emfile_while_passing_a_descriptor(start_server: ServerFactory) -> None:
    """The forker at its descriptor limit: the connection's socket cannot arrive
    (MSG_CTRUNC); the supervisor logs fork-failed EMFILE, frees the slot, pauses
    accepting, and serves again once the forker has room."""
    server = start_server()
    forker = one_forker(server)
    limits = resource.prlimit(forker, resource.RLIMIT_NOFILE)
    in_use = {int(fd) for fd in os.listdir(f"/proc/{forker}/fd")}
    lowest_free = min(set(range(len(in_use) + 1)) - in_use)
    resource.prlimit(forker, resource.RLIMIT_NOFILE, (lowest_free, limits[1]))
    try:
        with connect(server.port) as sock:
            failed = server.wait_event("fork-failed")[0]
            assert failed["error"] == "EMFILE"
            assert sock.recv(1) == b""  # closed unserved, never left hanging
    finally:
        resource.prlimit(forker, resource.RLIMIT_NOFILE, limits)
    assert echo_roundtrip(server.port, b"again") == b"again"
    server.wait_event("accept-resumed")
    assert server.wait_event("end")[0]["conns"] == "0/1000"


def test_handler_that_fails_to_import_only_in_the_forker(tmp_path: Path) -> None:
    """The supervisor imports the handler, the forker imports it again: an error
    there fails the start with exit 100 and one line, as one in the supervisor does."""
    handler = tmp_path / "twice.py"
    handler.write_text(
        "import os\n"
        f"marker = {str(tmp_path / 'imported')!r}\n"
        "if os.path.exists(marker):\n"
        "    raise RuntimeError('imported twice')\n"
        "open(marker, 'w').close()\n"
        "def handle(conn, peer):\n"
        "    conn.sendall(b'hi')\n"
    )
    result = run_cli(["serve", "127.0.0.1:0", "--handler", f"{handler}:handle"])
    assert result.returncode == 100
    lines = result.stderr.decode().splitlines()
    assert lines[-1] == (
        f"forkserve serve: importing handler module {str(handler)!r} failed: "
        "RuntimeError: imported twice"
    ), lines
    assert "Traceback" not in result.stderr.decode()


def test_reload_starts_a_new_forker_and_the_old_one_drains(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    config = tmp_path / "f.toml"
    config.write_text('banner = "one\\n"\n')
    server = start_server("--config", str(config))
    old = one_forker(server)
    with connect(server.port) as held:
        assert recv_exactly(held, 4) == b"one\n"
        config.write_text('banner = "two\\n"\n')
        server.send_signal(signal.SIGHUP)
        server.wait_event("reload", changed="banner")
        forkers = wait_until(lambda: len(server.forkers()) == 2 and server.forkers())
        assert old in forkers
        with connect(server.port) as fresh:
            assert recv_exactly(fresh, 4) == b"two\n"
            assert echoes(fresh)
        assert echoes(held)
    wait_until(lambda: old not in server.forkers(), what="the old forker to exit")
    server.wait_event("end", 2)
    assert server.stop() == 0
