"""SIGUSR2: a zero-downtime upgrade to a freshly executed server on the same socket."""

from __future__ import annotations

import os
import pwd
import random
import signal
import sys
import threading
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.integration.test_systemd import notify_socket, wait_notification
from tests.support import (
    WAIT,
    ServerProcess,
    connect,
    echo_roundtrip,
    process_alive,
    recv_exactly,
    wait_until,
)


class Load:
    """Clients that connect, echo a random payload and check it, in a loop."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.refused = 0
        self.wrong = 0
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def client(self) -> None:
        rng = random.Random()
        while not self.stop.is_set():
            payload = rng.randbytes(rng.randint(1, 32 * 1024))
            try:
                got = echo_roundtrip(self.port, payload)
            except ConnectionRefusedError:
                with self.lock:
                    self.refused += 1
                continue
            except OSError as exc:
                with self.lock:
                    self.errors.append(exc)
                continue
            with self.lock:
                if got == payload:
                    self.ok += 1
                else:
                    self.wrong += 1

    def wait_for(self, count: int) -> None:
        """Until ``count`` more round trips succeeded."""
        target = self.ok + count
        wait_until(lambda: self.ok >= target or self.errors, WAIT, f"{count} round trips")

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(WAIT)


def stop_new_master(server: ServerProcess, pid: int) -> None:
    """The new master is the test's to stop: it outlives the old one."""
    os.kill(pid, signal.SIGTERM)
    server.wait_event("stopped", pid=pid)
    wait_until(lambda: not process_alive(pid), WAIT, f"new master {pid} to exit")


def test_upgrade_under_load_refuses_nothing_and_loses_nothing(serve: ServerFactory) -> None:
    server = serve("--grace", "10")
    old = server.pid
    held = connect(server.port)  # the old master's, across the upgrade
    held.sendall(b"before")
    assert recv_exactly(held, 6) == b"before"
    load = Load(server.port)
    try:
        load.wait_for(20)
        server.send_signal(signal.SIGUSR2)
        new = int(server.wait_event("upgrade-ready")[0]["pid"])
        server.wait_event("listen", upgraded_from=old)
        load.wait_for(50)  # served by the new master
        assert process_alive(old)  # draining: its connection is still open
        held.sendall(b"after")
        assert recv_exactly(held, 5) == b"after"
    finally:
        load.finish()
        held.close()
    server.wait_event("stopped", pid=old)
    assert server.proc.wait(WAIT) == 0
    stop_new_master(server, new)
    assert (load.refused, load.wrong, load.errors) == (0, 0, [])
    assert load.ok >= 70
    ends = server.events("end")
    assert len(server.events("stop", mode="upgrade", pid=old)) == 1
    assert ends, "the old master's held connection ended in its own log"


def test_a_failed_upgrade_keeps_the_old_master_serving(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    handler = tmp_path / "app.py"
    handler.write_text("from forkserve import echo as handle\n")
    server = start_server("--handler", f"{handler}:handle")
    handler.write_text("this is not python\n")  # the new code is broken
    server.send_signal(signal.SIGUSR2)
    failed = server.wait_event("upgrade-failed")[0]
    assert failed["reason"] == "exited-before-ready"
    server.wait_event("upgrade-exit", exit=100)
    assert echo_roundtrip(server.port, b"still here") == b"still here"
    # Fixed, the next attempt succeeds.
    handler.write_text("from forkserve import echo as handle\n")
    server.send_signal(signal.SIGUSR2)
    new = int(server.wait_event("upgrade-ready")[0]["pid"])
    server.wait_event("stopped", pid=server.pid)
    assert server.proc.wait(WAIT) == 0
    assert echo_roundtrip(server.port, b"new") == b"new"
    stop_new_master(server, new)


def test_under_systemd_mainpid_moves_to_the_new_master(
    serve: ServerFactory, tmp_path: Path
) -> None:
    name = str(tmp_path / "notify")
    with notify_socket(name) as notify:
        server = serve(env={**os.environ, "NOTIFY_SOCKET": name})
        assert wait_notification(notify, "READY")["READY"] == "1"
        server.send_signal(signal.SIGUSR2)
        new = int(server.wait_event("upgrade-ready")[0]["pid"])
        handover = wait_notification(notify, "MAINPID")
        assert handover["MAINPID"] == str(new)
        server.wait_event("stopped", pid=server.pid)
        assert server.proc.wait(WAIT) == 0
        os.kill(new, signal.SIGTERM)
        # The first STOPPING=1 is the new master's, at its own stop: the old one
        # said nothing more after MAINPID.
        assert wait_notification(notify, "STOPPING") == {"STOPPING": "1"}
        server.wait_event("stopped", pid=new)
        wait_until(lambda: not process_alive(new), WAIT, "new master to exit")


SLOW = """\
import os, time
if os.path.exists({marker!r}):
    time.sleep(60)  # the new code hangs at start-up
from forkserve import echo as handle
"""


def test_a_new_master_that_is_never_ready_is_given_up(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "hang"
    handler = tmp_path / "slow.py"
    handler.write_text(SLOW.format(marker=str(marker)))
    server = start_server("--handler", f"{handler}:handle", "--upgrade-timeout", "0.5")
    marker.touch()
    server.send_signal(signal.SIGUSR2)
    failed = server.wait_event("upgrade-failed")[0]
    assert (failed["reason"], failed["timeout"]) == ("timeout", "0.5s")
    server.wait_event("upgrade-exit", signal="SIGTERM(15)")
    assert echo_roundtrip(server.port, b"still serving") == b"still serving"


def runnable_by_anyone(path: str) -> bool:
    """Whether every directory down to ``path`` and the file itself are open to all."""
    real = Path(os.path.realpath(path))
    steps = [*reversed(real.parents), real]
    return all(step.stat().st_mode & 0o001 for step in steps)


@pytest.mark.skipif(not runnable_by_anyone(sys.executable), reason="nobody cannot run this Python")
def test_an_upgrade_after_dropping_privileges(serve: ServerFactory) -> None:
    """The new master starts as the user the old one became, with the sockets
    already bound, so it neither binds nor switches again."""
    server = serve("--user", "nobody", "--metrics", "127.0.0.1:0")
    server.send_signal(signal.SIGUSR2)
    new = int(server.wait_event("upgrade-ready")[0]["pid"])
    server.wait_event("stopped", pid=server.pid)
    assert server.proc.wait(WAIT) == 0
    assert echo_roundtrip(server.port, b"as nobody") == b"as nobody"
    assert Path(f"/proc/{new}/status").read_text().count(str(pwd.getpwnam("nobody").pw_uid)) >= 4
    stop_new_master(server, new)


@pytest.mark.skipif(runnable_by_anyone(sys.executable), reason="nobody can run this Python here")
def test_an_upgrade_nobody_cannot_exec_is_reported(start_server: ServerFactory) -> None:
    server = start_server("--user", "nobody")
    server.send_signal(signal.SIGUSR2)
    failed = server.wait_event("upgrade-exec-failed")[0]
    assert failed["error"] == "EACCES"
    server.wait_event("upgrade-exit", exit=111)
    assert echo_roundtrip(server.port, b"still serving") == b"still serving"
