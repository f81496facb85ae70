"""The accept errno policy fork mode and the prefork workers share (parent.listeners)."""

from __future__ import annotations

import errno

import pytest

from forkserve.parent.listeners import (
    ACCEPT_BACK_OFF,
    ACCEPT_CLOSED,
    ACCEPT_RAISE,
    ACCEPT_RETRY,
    accept_action,
)


@pytest.mark.parametrize("number", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_out_of_a_resource_backs_off(number: int) -> None:
    assert accept_action(number) == ACCEPT_BACK_OFF


@pytest.mark.parametrize(
    "number", [errno.ECONNABORTED, errno.EPROTO, errno.ENETUNREACH, errno.EPERM]
)
def test_one_connections_error_goes_on(number: int) -> None:
    assert accept_action(number) == ACCEPT_RETRY


def test_a_listener_shut_down_is_closed() -> None:
    assert accept_action(errno.EINVAL) == ACCEPT_CLOSED


@pytest.mark.parametrize("number", [errno.EBADF, errno.ENOTSOCK, errno.EFAULT, None])
def test_anything_else_is_a_bug(number: int | None) -> None:
    assert accept_action(number) == ACCEPT_RAISE
