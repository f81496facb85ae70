"""--max-lifetime follows the connection, not its pid (issue 12, finding 5).

The kernel gives pids out again (pid_max is 32768 here: at 1,000 forks a second they
come round in about 30 s). Keyed by pid, a new connection that got a finished one's
pid was ended at the old one's deadline. Root can choose the next pid
(``/proc/sys/kernel/ns_last_pid``), which makes the reuse happen on purpose.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest

from tests.integration.conftest import ServerFactory
from tests.integration.test_timeouts import time_until_closed, trickle
from tests.support import connect

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


def connect_as(server_port: int, pid: int, accepts: int, server: object) -> socket.socket | None:
    """Connect so that the server's next fork gets ``pid``; None if another process on
    the machine took it first."""
    with open(NS_LAST_PID, "w") as file:
        file.write(str(pid - 1))
    sock = connect(server_port)
    accept = server.wait_event("accept", count=accepts)[-1]  # type: ignore[attr-defined]
    if int(accept["pid"]) == pid:
        return sock
    sock.close()
    return None


@pytest.mark.skipif(not os.access(NS_LAST_PID, os.W_OK), reason="needs root: ns_last_pid")
def test_a_reused_pid_gets_a_lifetime_of_its_own(start_server: ServerFactory) -> None:
    """A connection that starts on a finished one's pid lasts its own 3 s.

    An older connection (``held``) keeps the finished one's timer from the front of
    the queue, as any busy server does: keyed by pid, that timer then ended the new
    connection about 1 s early.
    """
    server = start_server("--idle-timeout", "1", "--max-lifetime", "3")
    with connect(server.port) as held:
        holder = threading.Thread(target=trickle, args=(held, 0.2, 6), daemon=True)
        holder.start()
        with connect(server.port) as first:  # silent: the idle timeout ends it after 1 s
            pid = int(server.wait_event("accept", count=2)[1]["pid"])
            time_until_closed(first)
        server.wait_event("end", pid=pid)
        for attempt in range(3, 13):  # another process may take the pid first
            second = connect_as(server.port, pid, attempt, server)
            if second is not None:
                break
        else:
            pytest.skip("the machine forked too much to reuse a pid on purpose")
        with second:
            elapsed, echoed = trickle(second, every=0.2, for_at_most=8)
        holder.join(10)
    # Keyed by pid, the first connection's deadline (2 s from its end) ended this one.
    assert elapsed >= 2.9, f"ended after {elapsed:.2f}s, not its own 3 s"
    assert echoed >= 10
    limits = server.wait_event("max-lifetime", count=2)
    assert limits[1]["pid"] == str(pid)
