"""Privileges: drop to ``--user``/``--group`` after bind, and the per-child resource
limits (``--limit-*``), checked at start-up.

The drop happens once, in the parent, after the listening socket is bound and before
the first fork, so every child and worker starts unprivileged and the parent cannot
get root back either: a bug anywhere after start-up is a bug as ``nobody``.
"""

from __future__ import annotations

import os

from forkserve._errors import TemporaryError, UsageError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Mapping


def resolve_user(name: str) -> tuple[int, int | None, str | None]:
    """``(uid, primary gid, name)`` of a user name or number.

    A number with no passwd entry has no primary group and no name (``--group`` is
    then required).

    Raises:
        UsageError: no such user.
    """
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if name.isdigit() and name.isascii():
            try:
                entry = pwd.getpwuid(int(name))
            except KeyError:
                return int(name), None, None
        else:
            raise UsageError(f"--user {name!r}: no such user") from None
    return entry.pw_uid, entry.pw_gid, entry.pw_name


def resolve_group(name: str) -> int:
    """The gid of a group name or number.

    Raises:
        UsageError: no such group.
    """
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit() and name.isascii():
            return int(name)
        raise UsageError(f"--group {name!r}: no such group") from None


def drop_privileges(user: str | None, group: str | None) -> None:
    """Become ``user`` (with its supplementary groups, initgroups(3)) and ``group``.

    With ``--user`` alone the group is the user's primary group; ``--group`` alone
    changes only the group (and clears supplementary groups). Order matters: groups
    first, while still allowed, then the uid. Afterwards getting root back must fail,
    which is checked.

    Raises:
        UsageError: an unknown user or group, or a bare uid without ``--group``.
        TemporaryError: the system refused (not running as root: EPERM).
    """
    if user is None and group is None:
        return
    uid, gid, name = resolve_user(user) if user is not None else (None, None, None)
    if group is not None:
        gid = resolve_group(group)
    if gid is None:
        raise UsageError(f"--user {user!r} has no passwd entry: give --group too")
    try:
        if name is not None:
            os.initgroups(name, gid)
        else:
            os.setgroups([gid])
        os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
    except PermissionError:
        who = f"user {user}" if user is not None else f"group {group}"
        raise TemporaryError(f"cannot switch to {who}: permission denied (not root?)") from None
    if uid is not None and uid != 0:
        check_dropped()


def check_dropped() -> None:
    """Fail loudly if root can be regained after the drop (it must not be)."""
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise TemporaryError("dropping privileges failed: setuid(0) still works")


def parse_size(text: str) -> int:
    """``--limit-as`` sizes: bytes, or with a binary suffix K, M, G or T (``512M``).

    Raises:
        ValueError: not a positive size.
    """
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, scale = text, 1
    if text[-1:].upper() in units:
        number, scale = text[:-1], units[text[-1].upper()]
    if not number.isdigit() or not number.isascii() or int(number) < 1:
        raise ValueError(f"expected a size like 4096, 512M or 2G, not {text!r}")
    return int(number) * scale


def rlimit_triples(limits: Mapping[str, int], reusable: bool) -> tuple[tuple[int, int, int], ...]:
    """The ``(resource, soft, hard)`` triples a child sets (see _prelude.apply_rlimits).

    Each limit is both soft and hard, so a program cannot raise it again; but the CPU
    limit's hard one is a second more, so SIGXCPU comes first (setrlimit(2)), and a
    prefork worker (``reusable``) keeps its hard CPU limit, since it needs a fresh
    budget for each connection.

    Raises:
        UsageError: a limit above the hard limit forkserve itself runs with, which a
            child could not set (raise the server's own limit first: ulimit -H).
    """
    import resource  # loaded here, at start-up, so children find it imported

    resources = {
        "nofile": resource.RLIMIT_NOFILE,
        "as": resource.RLIMIT_AS,
        "cpu": resource.RLIMIT_CPU,
        "nproc": resource.RLIMIT_NPROC,
    }
    triples = []
    for name, value in limits.items():
        which = resources[name]
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY and value > hard:
            raise UsageError(f"--limit-{name} {value} is above the hard limit ({hard})")
        if which == resource.RLIMIT_CPU:
            new_hard = hard if reusable else value + 1
            if hard != resource.RLIM_INFINITY:
                new_hard = min(new_hard, hard)
            triples.append((which, value, new_hard))
        else:
            triples.append((which, value, value))
    return tuple(triples)
