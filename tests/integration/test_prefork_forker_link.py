"""Prefork's forker is started without waiting too (parent.forker, prefork.forked):
a reload that replaces the workers waits for its new forker's READY in the loop,
the old workers serving with the old settings meanwhile; one whose forker fails is
refused, and the old workers, their alive pipe untouched, serve on."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.integration.conftest import ServerFactory
from tests.integration.test_forker import one_forker
from tests.integration.test_forker_link import (
    flaky_handler,
    scrape,
    slow_handler,
    still_importing,
)
from tests.integration.test_metrics import METRICS
from tests.support import connect, recv_exactly, wait_until

PREFORK = ("-v", "--mode", "prefork", "--min-spare", "2", "--max-spare", "3")


def test_a_prefork_reload_does_not_wait_for_the_new_forker(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    handler, marker = slow_handler(tmp_path)
    config = tmp_path / "f.toml"
    config.write_text('banner = "one\\n"\n')
    server = start_server(*PREFORK, "--config", str(config), "--handler", handler, *METRICS)
    old = one_forker(server)
    server.wait_event("worker-start", count=2)
    marker.touch()
    config.write_text('banner = "two\\n"\n')
    server.send_signal(signal.SIGHUP)
    for _ in range(3):  # old workers, old settings, while the new forker imports
        with connect(server.port) as sock:
            assert recv_exactly(sock, 4) == b"one\n"
            sock.sendall(b"ping")
            assert recv_exactly(sock, 4) == b"ping"
    scrape(server)
    assert still_importing(marker)
    assert not server.events("reload")
    server.wait_event("reload", changed="banner")
    for _ in range(3):  # from now on no old worker accepts (their alive pipe closed)
        with connect(server.port) as sock:
            assert recv_exactly(sock, 4) == b"two\n"
    wait_until(lambda: old not in server.forkers(), what="the old forker to retire")
    assert server.stop() == 0


def test_a_prefork_reload_whose_forker_fails_keeps_the_old_workers(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    module, marker = flaky_handler(tmp_path)
    config = tmp_path / "f.toml"
    config.write_text('banner = "one\\n"\n')
    server = start_server(*PREFORK, "--config", str(config), "--handler", f"{module}:handle")
    old = one_forker(server)
    workers = server.wait_event("worker-start", count=2)
    marker.touch()
    config.write_text('banner = "two\\n"\n')
    server.send_signal(signal.SIGHUP)
    failed = server.wait_event("reload-failed")[0]
    assert "broken now" in failed["error"], failed
    for _ in range(4):
        with connect(server.port) as sock:
            assert recv_exactly(sock, 6) == b"one\nok"
    wait_until(lambda: server.forkers() == [old], what="the failed forker to exit")
    assert not server.events("worker-exit")  # the old workers never saw their pipe end
    assert {w["pid"] for w in workers} <= {a["pid"] for a in server.events("worker-start")}
    assert server.stop() == 0
