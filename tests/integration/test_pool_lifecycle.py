"""Prefork's pool lifecycle under stress: spawning short of resources, stopping with
a socket the server does not own, grace expiry, reload, and a worker that leaves
just as a connection arrives."""

from __future__ import annotations

import resource

from tests.integration.conftest import ServerFactory
from tests.support import echo_roundtrip


def low_nofile() -> None:
    """preexec: 256 descriptors, as ``ulimit -n 256`` gives."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


def test_spawning_out_of_descriptors_serves_and_retries(start_server: ServerFactory) -> None:
    """Finding 6: each worker's channel (--per-ip) costs the supervisor a descriptor;
    300 of them under a limit of 256 must not kill it: it logs once, serves with
    the workers it has, and grows the pool once descriptors return."""
    server = start_server(
        *("--mode", "prefork", "--min-spare", "300", "--max-spare", "300"),
        *("--max-workers", "400", "--per-ip", "100"),
        preexec_fn=low_nofile,
    )
    (failed,) = server.wait_event("fork-failed")
    assert failed["error"] == "EMFILE"
    assert echo_roundtrip(server.port, b"still serving") == b"still serving"
    _, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (4096, hard))
    (resumed,) = server.wait_event("spawn-resumed")
    assert resumed["after"] == "EMFILE"
    assert int(resumed["failures"]) >= 1
    assert len(server.events("fork-failed")) == 1  # once per burst, not per retry
    assert echo_roundtrip(server.port, b"and after") == b"and after"
