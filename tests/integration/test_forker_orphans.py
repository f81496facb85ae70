"""A forker killed between a fork and its report: the process it forked is still
ended at a stop, and logged (the supervisor is its subreaper)."""

from __future__ import annotations

import os
import signal

from tests.integration.conftest import ServerFactory
from tests.soak.scenarios import CHAOS
from tests.support import children_of, connect, proc_stat, recv_exactly, start_time, wait_until


def test_a_process_the_dead_forker_never_reported_is_ended_at_a_stop(
    start_server: ServerFactory,
) -> None:
    env = dict(os.environ, FORKSERVE_TEST_FORKER_STOP="after-fork")
    server = start_server("--handler", CHAOS, "--grace", "1", env=env)
    (forker,) = wait_until(server.forkers, what="a forker")
    with connect(server.port) as sock:
        # The forker forks the connection's process, then stops before reporting it.
        wait_until(lambda: (proc_stat(forker) or ("",))[0] == "T", what="the forker stopped")
        ((child, _),) = children_of(forker)
        born = start_time(child)
        sock.sendall(b"Hx")
        assert recv_exactly(sock, 1) == b"x"  # it serves
        os.kill(forker, signal.SIGKILL)
        (died,) = server.wait_event("forker-died")
        assert (died["lost"], died["adopted"]) == ("1", "1")
        wait_until(lambda: (proc_stat(child) or ("", 0))[1] == server.pid, what="adopted")
        # A stop with the client still connected: its process is the server's to end.
        assert server.stop() == 0
        alive = start_time(child) == born and (proc_stat(child) or ("Z",))[0] != "Z"
        if alive:
            os.kill(child, signal.SIGKILL)  # ours: found by pid and start time
        assert not alive, f"process {child} left running after the server stopped"
    (end,) = server.events("end", pid=child)
    assert end["signal"] == "SIGTERM(15)"
