"""Every duration setting is bounded where it is parsed (issue 12, finding 4).

poll(2) and epoll_wait(2) take milliseconds as a C int: Python's poll raises
OverflowError past 2**31 - 1 ms (24.8 days), and a socket timeout past time_t. The
settings table's duration kinds (command line, config file, reload), the Python API's
checks and the client's and bench's ``seconds`` all refuse what cannot be waited for.
"""

from __future__ import annotations

import argparse
import math
import select
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkserve._errors import UsageError
from forkserve.cli.args import seconds
from forkserve.config.settings import SECONDS, TIMEOUT
from forkserve.config.table import SERVE
from forkserve.core.gate import MAX_SECONDS
from forkserve.parent.assemble import check_seconds

DURATIONS = [setting for setting in SERVE if setting.kind in (SECONDS, TIMEOUT)]
POLL_LIMIT_MS = 2**31 - 1

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(min_value=MAX_SECONDS - 2, max_value=MAX_SECONDS + 2),
    st.integers(min_value=MAX_SECONDS - 2, max_value=MAX_SECONDS + 2),
)


def waitable(value: float) -> bool:
    return value >= 0 and math.ceil(value * 1000) <= POLL_LIMIT_MS


def test_every_duration_setting_is_bounded() -> None:
    assert {s.key for s in DURATIONS} >= {
        "grace",
        "upgrade-timeout",
        "idle-timeout",
        "max-lifetime",
        "handshake-timeout",
    }


@pytest.mark.parametrize("setting", DURATIONS, ids=lambda s: s.key)
@given(value=numbers)
def test_the_table_accepts_only_what_poll_can_wait_for(setting: object, value: float) -> None:
    kind = setting.kind  # type: ignore[attr-defined]
    for parse, given_value in ((kind.from_text, str(value)), (kind.check, value)):
        try:
            parsed = parse(given_value)
        except ValueError as exc:
            assert not 0 < value <= MAX_SECONDS, f"{value!r} refused: {exc}"
            if value > MAX_SECONDS and value != math.inf:
                assert f"at most {MAX_SECONDS} seconds" in str(exc)
            continue
        assert parsed == float(value)
        assert waitable(parsed), f"{setting.key} took {value!r}"  # type: ignore[attr-defined]


@given(value=numbers)
def test_the_api_and_the_other_commands_refuse_the_same(value: float) -> None:
    try:
        check_seconds("grace", value)
    except UsageError as exc:
        assert not 0 <= value <= MAX_SECONDS
        assert "more seconds" in str(exc) or f"at most {MAX_SECONDS} seconds" in str(exc)
    else:
        assert waitable(value)
    try:
        parsed = seconds(str(value))
    except argparse.ArgumentTypeError:
        assert not 0 <= value <= MAX_SECONDS
    else:
        assert waitable(parsed)


def test_the_longest_duration_can_be_waited_for() -> None:
    """The bound is below what the loop's epoll and a child's socket accept."""
    ours, theirs = socket.socketpair()
    with ours, theirs, select.epoll() as poller:
        poller.register(ours, select.EPOLLOUT)  # ready: poll returns at once
        assert poller.poll(MAX_SECONDS)
        ours.settimeout(MAX_SECONDS)
        theirs.send(b"x")
        assert ours.recv(1) == b"x"
