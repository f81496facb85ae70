from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import ServerProcess

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
