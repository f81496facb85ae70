"""Which exec-mode services are spawned (parent.spawn), and what a spawn closes."""

from __future__ import annotations

import os
import resource

import pytest

from forkserve._log import Log
from forkserve.child.edge import Edge
from forkserve.child.exec import ExecService, Program
from forkserve.child.handler import PythonService, echo
from forkserve.child.prelude import Prelude
from forkserve.parent.spawn import Spawner, inheritable_fds, spawner_for


@pytest.mark.parametrize(
    ("prelude", "spawnable"),
    [
        (Prelude(), True),
        (Prelude(b"hi"), False),
        (Prelude(handshake_timeout=1.0), False),
        (Prelude(rlimits=((resource.RLIMIT_NOFILE, 64, 64),)), False),
    ],
)
def test_a_program_is_spawned_when_no_step_runs_before_it(
    prelude: Prelude, spawnable: bool
) -> None:
    log = Log()
    service = ExecService(Program(["cat"]), log, prelude)
    assert service.spawnable is spawnable
    assert isinstance(spawner_for(service, object()), Spawner) is spawnable


def test_an_edge_or_a_lookup_needs_the_fork() -> None:
    log = Log()
    assert not ExecService(Program(["cat"]), log, edge=Edge(log, proxy="v1")).spawnable
    assert not ExecService(Program(["cat"], lookup_hosts=True), log).spawnable
    assert ExecService(Program(["cat"], local_host="me.example"), log).spawnable


def test_a_python_handler_is_never_spawned() -> None:
    assert spawner_for(PythonService(echo), object()) is None


def test_inheritable_descriptors_are_found_and_cloexec_ones_are_not() -> None:
    inheritable = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(inheritable, True)
    cloexec = os.open(os.devnull, os.O_RDONLY)
    try:
        found = inheritable_fds()
        assert inheritable in found
        assert cloexec not in found
        assert all(fd > 2 for fd in found)
    finally:
        os.close(inheritable)
        os.close(cloexec)
