"""Privileges: resolving --user/--group, the switch, sizes for --limit-as."""

from __future__ import annotations

import os
import pwd

import pytest

from forkserve._errors import TemporaryError, UsageError
from forkserve.core.units import parse_size
from forkserve.parent.privileges import resolve_identity, switch_identity


def test_sizes() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("512M") == 512 << 20
    assert parse_size("2g") == 2 << 30
    assert parse_size("1T") == 1 << 40
    for bad in ["", "M", "0", "-1", "1.5G", "12X", "1 G"]:
        with pytest.raises(ValueError, match="expected a size"):
            parse_size(bad)


def test_identities() -> None:
    nobody = pwd.getpwnam("nobody")
    identity = resolve_identity("nobody", None)
    assert identity is not None
    assert (identity.uid, identity.gid, identity.name) == (nobody.pw_uid, nobody.pw_gid, "nobody")
    numeric = resolve_identity(str(nobody.pw_uid), "0")
    assert numeric is not None
    assert (numeric.uid, numeric.gid, numeric.name) == (nobody.pw_uid, 0, "nobody")
    group_only = resolve_identity(None, "nogroup")
    assert group_only is not None and group_only.uid is None
    assert resolve_identity(None, None) is None
    with pytest.raises(UsageError, match="give --group too"):
        resolve_identity("4000000", None)
    with pytest.raises(UsageError, match="no such user"):
        resolve_identity("no-such-user-here", None)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody first")
def test_switching_is_refused_without_root_and_root_cannot_come_back() -> None:
    """In a forked child (the test process must keep its own identity)."""
    root = resolve_identity("root", None)
    nobody = resolve_identity("nobody", None)
    assert root is not None and nobody is not None
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            switch_identity(nobody)
            try:
                switch_identity(root)
            except TemporaryError as exc:
                if str(exc) == "cannot switch to user root: permission denied (not root?)":
                    code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
