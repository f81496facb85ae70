"""The parent's accept errno policy (parent.forkmodel.Acceptor), with a scripted
listener: what is retried, what pauses accepting (logged once per burst), what
crashes."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator

import pytest

from forkserve._log import Log
from forkserve.parent.forkmodel import Acceptor
from forkserve.parent.listeners import ACCEPT_PAUSE


class Listener:
    """Each accept() takes the next step: an errno to raise, or a connection."""

    def __init__(self, *steps: int | str) -> None:
        self.steps = list(steps)

    def accept(self) -> tuple[object, str]:
        step = self.steps.pop(0) if self.steps else errno.EAGAIN
        if isinstance(step, int):
            raise BlockingIOError(step, "") if step == errno.EAGAIN else OSError(step, "")
        return object(), step

    def close(self) -> None:
        pass


class Logged:
    def __init__(self) -> None:
        self.file = tempfile.NamedTemporaryFile()  # noqa: SIM115 - closed in close()
        self.fd = os.open(self.file.name, os.O_WRONLY | os.O_APPEND)
        self.log = Log(fd=self.fd)

    def events(self) -> list[str]:
        with open(self.file.name) as f:
            return [" ".join(line.split()[1:]) for line in f]

    def close(self) -> None:
        os.close(self.fd)
        self.file.close()


@pytest.fixture
def logged() -> Iterator[Logged]:
    logged = Logged()
    yield logged
    logged.close()


def acceptor(logged: Logged, *steps: int | str) -> Acceptor:
    return Acceptor(Listener(*steps), logged.log)  # type: ignore[arg-type]


def test_aborted_connections_are_skipped_and_eagain_means_none_left(logged: Logged) -> None:
    accepting = acceptor(logged, errno.ECONNABORTED, errno.EPROTO, "a")
    accepted = accepting.accept()
    assert accepted is not None and accepted[1] == "a"
    assert accepting.accept() is None
    assert accepting.paused_until == 0.0
    assert logged.events() == []


@pytest.mark.parametrize("number", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_a_capacity_errno_pauses_accepting_logged_once_per_burst(
    logged: Logged, number: int
) -> None:
    name = errno.errorcode[number]
    accepting = acceptor(logged, number, number, number, "a")
    for _ in range(3):
        assert accepting.accept() is None
        assert accepting.paused_until > 0
    accepting.resume_if_due(accepting.paused_until - ACCEPT_PAUSE / 2)
    assert accepting.paused_until > 0
    accepting.resume_if_due(accepting.paused_until)
    assert accepting.paused_until == 0.0
    assert accepting.accept() is not None
    assert logged.events() == [
        f"accept-paused error={name} pause={ACCEPT_PAUSE}s",
        f"accept-resumed after={name} failures=3",
    ]


def test_an_errno_no_policy_names_is_a_bug_and_raises(logged: Logged) -> None:
    accepting = acceptor(logged, errno.EBADF)
    with pytest.raises(OSError, match=r"\[Errno 9\]"):
        accepting.accept()
