from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import ServerProcess, mode_args

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def start_server() -> Iterator[ServerFactory]:
    """Start ``forkserve serve`` subprocesses; each is stopped and checked at teardown."""
    started: list[ServerProcess] = []

    def start(*args: str, **kwargs: Any) -> ServerProcess:
        server = ServerProcess(args, **kwargs)
        started.append(server)
        return server

    yield start
    leftovers = []
    for server in started:
        leftovers.extend(server.close())
    assert not leftovers, f"processes left behind: {leftovers}"


@pytest.fixture(params=["fork", "prefork"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both process models: a test that takes ``serve`` runs once for each."""
    return str(request.param)


@pytest.fixture
def serve(start_server: ServerFactory, mode: str) -> ServerFactory:
    """``start_server`` in the current ``mode``."""

    def start(*args: str, **kwargs: Any) -> ServerProcess:
        return start_server(*mode_args(mode), *args, **kwargs)

    return start
