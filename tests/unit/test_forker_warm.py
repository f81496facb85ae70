"""forker.process.warm: the child-side path is specialized in the forker, so each
child does not specialize (and copy) it again; nothing with effects runs."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from forkserve.child.connection import Connection
from forkserve.child.handler import PythonService, echo
from forkserve.child.prelude import Prelude
from forkserve.forker import process

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="the adaptive interpreter is 3.11's"
)


# Run in a fresh interpreter: the code objects there have not run yet.
SPECIALIZED = """
import dis
from forkserve.child.handler import PythonService, echo, run_handler
from forkserve.forker import process


def specialized(function):
    plain = [ins.opname for ins in dis.get_instructions(function)]
    adaptive = [ins.opname for ins in dis.get_instructions(function, adaptive=True)]
    return sum(after != before for before, after in zip(plain, adaptive, strict=True))


before = specialized(echo), specialized(run_handler)
process.warm(PythonService(echo))
print(*before, specialized(echo), specialized(run_handler))
"""


def test_warm_specializes_the_echo_path() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SPECIALIZED], capture_output=True, check=True, timeout=60
    )
    echo_before, run_before, echo_after, run_after = map(int, out.stdout.split())
    assert (echo_before, run_before) == (0, 0)
    assert echo_after > 0
    assert run_after > 0


def test_warm_never_calls_the_users_handler() -> None:
    calls: list[object] = []

    def handler(conn: socket.socket, peer: object) -> None:
        calls.append(peer)

    process.warm(PythonService(handler, Prelude(rlimits=((7, 64, 64),))))
    assert calls == []


def test_warm_skips_a_service_with_an_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[object, ...]] = []

    def call(*args: object) -> int:
        ran.append(args)
        return 0

    monkeypatch.setattr(PythonService, "__call__", call)
    process.warm(PythonService(echo, edge=object()))  # type: ignore[arg-type]
    assert ran == []
    process.warm(PythonService(echo))
    assert len(ran) == process.WARM_RUNS
    assert all(isinstance(args[2], Connection) for args in ran)
