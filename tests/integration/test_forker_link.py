"""The supervisor's link to its forker (parent.forker) never blocks it.

A forker started after start-up (a reload that changes what it holds, a respawn after
one died) may take long to be ready: it imports the user's handler afresh. These tests
make that import slow (only while a marker file exists, so the first start is quick)
and check that the supervisor keeps serving meanwhile: its /metrics endpoint answers,
the old forker serves new clients during a reload, and after a respawn the clients
that came meanwhile wait (none lost) and are served once the new forker is ready.
Also: connections never sent to a forker are dropped at a stop's end, and an exec
mode that spawns every program starts no forker at all.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.integration.test_forker import fill_the_channel, one_forker
from tests.integration.test_metrics import METRICS, http_get, metrics_port
from tests.integration.test_systemd import notify_socket, wait_notification
from tests.support import WAIT, ServerProcess, connect, recv_exactly, wait_until

# How long the handler's import takes while the marker exists: far longer than a
# supervisor that does not wait for it takes to answer.
SLOW = 3.0
QUICK = SLOW / 2  # how long the broken handler takes to fail

SLOW_HANDLER = """\
import os
import time

if os.path.exists({marker!r}):
    time.sleep({slow!r})
    open({marker!r} + ".done", "w").close()


def handle(conn, peer):
    while data := conn.recv(4096):
        conn.sendall(data)
"""


def slow_handler(tmp_path: Path) -> tuple[str, Path]:
    """The ``--handler`` spec of an echo handler whose import sleeps SLOW seconds
    while the returned marker file exists."""
    marker = tmp_path / "slow"
    module = tmp_path / "slowimport.py"
    module.write_text(SLOW_HANDLER.format(marker=str(marker), slow=SLOW))
    return f"{module}:handle", marker


def still_importing(marker: Path) -> bool:
    """Whether the slow import that ``marker`` started has not finished yet."""
    return not Path(f"{marker}.done").exists()


def flaky_handler(tmp_path: Path) -> tuple[Path, Path]:
    """A handler module (answers ``ok``) whose import fails, after QUICK seconds,
    while the returned marker file exists."""
    module = tmp_path / "flaky.py"
    marker = tmp_path / "broken"
    module.write_text(
        "import os\nimport time\n"
        f"if os.path.exists({str(marker)!r}):\n"
        f"    time.sleep({QUICK!r})\n"
        "    raise RuntimeError('broken now')\n"
        "def handle(conn, peer):\n    conn.sendall(b'ok')\n"
    )
    return module, marker


def scrape(server: ServerProcess) -> None:
    status, _ = http_get(metrics_port(server), "/metrics")
    assert status == 200


def test_a_reload_does_not_wait_for_the_new_forker(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """SIGHUP with a new forker slow to import the handler: the old forker serves new
    clients with the old settings until the new one is ready, then the reload applies."""
    handler, marker = slow_handler(tmp_path)
    config = tmp_path / "f.toml"
    config.write_text('banner = "one\\n"\n')
    server = start_server("--config", str(config), "--handler", handler, *METRICS)
    old = one_forker(server)
    marker.touch()
    config.write_text('banner = "two\\n"\n')
    server.send_signal(signal.SIGHUP)
    with connect(server.port) as sock:
        assert recv_exactly(sock, 4) == b"one\n"  # the old forker, the old settings
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
    scrape(server)
    assert still_importing(marker)  # all that was served while the new forker loads
    assert not server.events("reload")
    server.wait_event("reload", changed="banner")
    with connect(server.port) as sock:
        assert recv_exactly(sock, 4) == b"two\n"
    wait_until(lambda: old not in server.forkers(), what="the old forker to retire")
    server.wait_event("end", 2)
    assert server.stop() == 0


def test_a_newer_reload_or_a_stop_refuses_one_still_waiting(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """A SIGHUP while a reload waits for its forker: the waiting one is refused and
    its forker ended, the newer one applies. A stop refuses one still waiting, and
    ends without waiting for its forker's imports."""
    handler, marker = slow_handler(tmp_path)
    config = tmp_path / "f.toml"
    config.write_text('banner = "one\\n"\n')
    server = start_server("--config", str(config), "--handler", handler)
    marker.touch()
    for count, text in enumerate(["two", "six"], start=1):
        config.write_text(f'banner = "{text}\\n"\n')
        server.send_signal(signal.SIGHUP)
        server.wait_event("forker-starting", count=count)
    failed = server.wait_event("reload-failed")[0]
    assert failed["error"] == "a newer reload came"
    server.wait_event("reload", changed="banner")
    with connect(server.port) as sock:
        assert recv_exactly(sock, 4) == b"six\n"
    wait_until(lambda: len(server.forkers()) == 1, what="one forker: the others ended")
    config.write_text('banner = "ten\\n"\n')
    server.send_signal(signal.SIGHUP)
    server.wait_event("forker-starting", count=3)
    assert server.stop() == 0
    assert server.wait_event("reload-failed", count=2)[-1]["error"] == "the server is stopping"
    assert len(server.events("reload")) == 1


def test_under_systemd_ready_comes_once_the_new_forker_serves(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """RELOADING=1 at the SIGHUP; READY=1 only once the reload applied: a client
    that connects then gets the new settings."""
    handler, marker = slow_handler(tmp_path)
    config = tmp_path / "f.toml"
    config.write_text('banner = "one\\n"\n')
    name = str(tmp_path / "notify")
    with notify_socket(name) as notify:
        env = {**os.environ, "NOTIFY_SOCKET": name}
        server = start_server("--config", str(config), "--handler", handler, env=env)
        assert wait_notification(notify, "READY")["READY"] == "1"
        marker.touch()
        config.write_text('banner = "two\\n"\n')
        server.send_signal(signal.SIGHUP)
        assert wait_notification(notify, "RELOADING")["RELOADING"] == "1"
        assert wait_notification(notify, "READY")["READY"] == "1"
        with connect(server.port) as sock:
            assert recv_exactly(sock, 4) == b"two\n"
    assert server.stop() == 0


def test_a_reload_whose_forker_fails_keeps_the_old_one(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """The new forker fails to import the handler (after a while): the reload is
    refused as any failed reload (reload-failed, the running configuration kept)."""
    module, marker = flaky_handler(tmp_path)
    config = tmp_path / "f.toml"
    config.write_text('banner = "one\\n"\n')
    server = start_server("--config", str(config), "--handler", f"{module}:handle", *METRICS)
    old = one_forker(server)
    marker.touch()
    config.write_text('banner = "two\\n"\n')
    server.send_signal(signal.SIGHUP)
    failed = server.wait_event("reload-failed")[0]
    assert "broken now" in failed["error"], failed
    assert failed["kept"] == "the running configuration"
    assert not server.events("reload")
    with connect(server.port) as sock:
        assert recv_exactly(sock, 6) == b"one\nok"
    wait_until(lambda: server.forkers() == [old], what="the failed forker to exit")
    _, body = http_get(metrics_port(server), "/metrics")
    assert b'forkserve_operations_total{operation="reload-failed"} 1' in body, body
    assert server.stop() == 0


def test_a_respawn_does_not_wait_for_the_new_forker(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """The forker SIGKILLed while its replacement is slow to start: the supervisor
    answers meanwhile, and the clients that came wait for the new forker: each is
    served once it is ready, none lost."""
    handler, marker = slow_handler(tmp_path)
    server = start_server("--handler", handler, *METRICS)
    old = one_forker(server)
    marker.touch()
    os.kill(old, signal.SIGKILL)
    server.wait_event("forker-died", pid=old)
    clients = []
    try:
        for number in range(5):
            sock = connect(server.port)
            sock.sendall(b"%d" % number)
            clients.append(sock)
        scrape(server)
        assert still_importing(marker)  # answered while the new forker loads
        for number, sock in enumerate(clients):
            assert recv_exactly(sock, 1) == b"%d" % number
    finally:
        for sock in clients:
            sock.close()
    server.wait_event("end", len(clients))
    assert server.events("end")[-1]["conns"] == "0/1000"
    assert server.stop() == 0


def closed_clients(clients: list[socket.socket], at_least: int) -> int:
    """How many of ``clients`` the server closed unserved (EOF or reset), waiting
    until ``at_least`` are, or WAIT seconds."""
    by_fd = {sock.fileno(): sock for sock in clients}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    closed = 0
    deadline = time.monotonic() + WAIT
    while closed < at_least and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            poller.unregister(fd)
            try:
                data = by_fd[fd].recv(1)
            except ConnectionResetError:
                data = b""
            assert data == b"", "a connection was served by a stopped forker"
            closed += 1
    return closed


@pytest.mark.parametrize("stop", ["grace", "fast"])
def test_a_stop_drops_what_was_never_sent_to_the_forker(
    start_server: ServerFactory, stop: str
) -> None:
    """A stopped forker: its channel fills and connections wait in the supervisor.
    At the grace period's end (or a fast stop) those are closed and their slots
    released, with a line saying how many; the stop then ends without them, and
    what the forker received but started only after the stop's SIGKILL is killed."""
    server = start_server("--max-conns", "3000", "--backlog", "4096", "--grace", "0.5")
    forker = one_forker(server)
    os.kill(forker, signal.SIGSTOP)
    clients: list[socket.socket] = []
    try:
        fill_the_channel(server, clients)
        server.send_signal(signal.SIGTERM if stop == "grace" else signal.SIGQUIT)
        dropped = int(server.wait_event("forker-dropped")[0]["waiting"])
        assert dropped >= 1
        assert closed_clients(clients, dropped) >= dropped  # while the forker is stopped
        # What the forker did receive, it forks once it runs again: after the stop
        # ended every child (SIGKILL), so those are ended at once, and nothing stays.
        server.wait_event("kill", signal="SIGKILL")
        os.kill(forker, signal.SIGCONT)
        assert server.wait_exit(timeout=2 * WAIT) == 0
        server.wait_event("stopped")
        ends = server.events("end")
        assert len(ends) == len(server.events("accept")) > 0
        assert {end.get("signal") for end in ends} == {"SIGKILL(9)"}
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone with the server
            os.kill(forker, signal.SIGCONT)
        for sock in clients:
            sock.close()


def test_exec_mode_that_spawns_starts_no_forker(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """Every program posix_spawned: no forker. A reload that needs one (a banner:
    Python runs before the program) starts it then, and one that no longer does
    lets it go."""
    config = tmp_path / "f.toml"
    config.write_text("")
    server = start_server("--config", str(config), "--", "cat")
    assert server.wait_event("listen")[0]["start"] == "spawn"
    with connect(server.port) as sock:
        sock.sendall(b"spawned")
        assert recv_exactly(sock, 7) == b"spawned"
    assert server.forkers() == []
    config.write_text('banner = "hi\\n"\n')
    server.send_signal(signal.SIGHUP)
    assert server.wait_event("reload")[0]["start"] == "fork"
    forker = one_forker(server)
    with connect(server.port) as sock:
        assert recv_exactly(sock, 3) == b"hi\n"
        sock.sendall(b"forked")
        assert recv_exactly(sock, 6) == b"forked"
    config.write_text("")
    server.send_signal(signal.SIGHUP)
    assert server.wait_event("reload", count=2)[-1]["start"] == "spawn"
    wait_until(lambda: forker not in server.forkers(), what="the forker to leave")
    assert server.forkers() == []
    with connect(server.port) as sock:
        sock.sendall(b"again")
        assert recv_exactly(sock, 5) == b"again"
    server.wait_event("end", 3)
    assert server.stop() == 0
