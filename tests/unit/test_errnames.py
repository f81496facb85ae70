"""core.errnames: how every log line names an errno."""

from __future__ import annotations

import errno

from forkserve.core.errnames import errno_name


def test_known_errnos_by_name() -> None:
    assert errno_name(errno.EMFILE) == "EMFILE"
    assert errno_name(errno.ECONNABORTED) == "ECONNABORTED"


def test_unknown_and_missing_errnos() -> None:
    assert errno_name(99999) == "99999"
    assert errno_name(None) == "None"
    assert errno_name(None, "SSLError") == "SSLError"
    assert errno_name(99999, "TimeoutError") == "TimeoutError"
