"""The fast subset of ``make soak``: every reliability scenario, small, both modes."""

from __future__ import annotations

import pytest

from tests.soak.scenarios import ASYNC_SCENARIOS, FAST, SCENARIOS


@pytest.mark.parametrize("mode", ["fork", "prefork", "async"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str, mode: str) -> None:
    if mode == "async" and name not in ASYNC_SCENARIOS:
        pytest.skip("async mode runs " + ", ".join(ASYNC_SCENARIOS))
    result = SCENARIOS[name](mode, FAST)
    assert result.ok, "; ".join(result.problems)
    assert result.zombies == 0
    assert result.fds_leaked == 0
