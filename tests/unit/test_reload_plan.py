"""A SIGHUP reload without processes: the plan a reload builds and the loop applies.

A real Server (bound to 127.0.0.1 port 0) and its real loop object, never run: the
reload source is a function returning new Settings, as config.options.Reloader does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import cast

import pytest

from forkserve import Log, Server
from forkserve._errors import UsageError
from forkserve.child.handler import Service
from forkserve.config.reload import ReloadPlan, reload
from forkserve.config.values import Settings
from forkserve.core.gate import Policy
from forkserve.parent.forkmodel import ForkModel
from forkserve.parent.loop import Loop


class Source:
    """What a reload reads: the next answer, or an error to raise."""

    def __init__(self) -> None:
        self.answer: tuple[Settings, list[str], list[str]] | None = None

    def __call__(self) -> tuple[Settings, list[str], list[str]]:
        if self.answer is None:
            raise UsageError("config file 'x.toml': grace: expected seconds")
        return self.answer


@pytest.fixture
def logged() -> Iterator[tuple[Log, int]]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    log = Log(fd=write)
    yield log, read
    os.close(read)
    os.close(write)


def lines(read: int) -> str:
    return os.read(read, 65536).decode()


def make(settings: Settings, log: Log, source: Source) -> tuple[Server, Loop]:
    server = Server(("127.0.0.1", 0), settings=settings, log=log, reload=source)
    loop = server.make_loop(lambda: None)
    server.attach_operations(loop)
    return server, loop


def test_a_fork_mode_reload_applies_its_plan(logged: tuple[Log, int]) -> None:
    log, read = logged
    source = Source()
    old = Settings(max_conns=5, grace=1.0, per_ip=2)
    server, loop = make(old, log, source)
    try:
        old_gate = loop.admission.policy.gate
        new = old.replace(max_conns=7, grace=2.0, upgrade_timeout=3.0, log_format="json")
        new = new.replace(ipv6_prefix=48, max_lifetime=9.0)  # a new process's only
        source.answer = (new, ["max-conns", "grace", "upgrade-timeout"], ["ipv6-prefix"])
        reload(server)
        assert loop.grace == 2.0
        assert loop.upgrading.timeout == 3.0
        policy = loop.admission.policy
        assert policy is server.policy
        assert policy.gate is not old_gate
        assert policy.gate.ipv6_prefix == 64 and policy.max_lifetime == 0.0
        assert log.format == "json"
        assert server.settings.max_conns == 7
        assert server.settings.ipv6_prefix == 64
        assert isinstance(loop.model, ForkModel) and loop.model.max_conns == 7
        (line,) = [json.loads(text) for text in lines(read).splitlines()]
        assert line["event"] == "reload"
        assert line["changed"] == "max-conns,grace,upgrade-timeout"
        assert line["needs_upgrade"] == "ipv6-prefix"
    finally:
        loop.sel.close()
        server.close()


def test_a_refused_reload_changes_nothing(logged: tuple[Log, int]) -> None:
    log, read = logged
    server, loop = make(Settings(max_conns=5), log, Source())
    try:
        assert isinstance(loop.model, ForkModel)
        policy, service = loop.admission.policy, loop.model.conns.service
        reload(server)
        assert (loop.admission.policy, loop.model.conns.service) == (policy, service)
        assert loop.grace == 10.0
        assert "reload-failed error=\"config file 'x.toml': grace" in lines(read)
        source = Source()
        source.answer = (server.settings.replace(max_spare=0), ["max-spare"], [])
        server.reload_source = source
        reload(server)
        assert "reload-failed" in lines(read) and loop.admission.policy is policy
    finally:
        loop.sel.close()
        server.close()


def test_the_plan_carries_the_mode_s_own_limits() -> None:
    service = cast("Service", None)
    fork = ReloadPlan(Settings(max_conns=3), frozenset({"max-conns"}), Policy(), service)
    assert (fork.max_conns, fork.pool) == (3, None)
    settings = Settings(mode="prefork", min_spare=1, max_spare=2, max_workers=3, max_requests=4)
    prefork = ReloadPlan(settings, frozenset(), Policy(), service)
    assert prefork.max_conns is None
    assert prefork.pool == {"min_spare": 1, "max_spare": 2, "max_workers": 3, "max_requests": 4}
