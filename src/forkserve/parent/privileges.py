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


def resolve_user(name: str, flag: str = "--user") -> tuple[int, int | None, str | None]:
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
            raise UsageError(f"{flag} {name!r}: no such user") from None
    return entry.pw_uid, entry.pw_gid, entry.pw_name


def resolve_group(name: str, flag: str = "--group") -> int:
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
        raise UsageError(f"{flag} {name!r}: no such group") from None


def resolve_owner(user: str | None, group: str | None) -> tuple[int, int] | None:
    """``--socket-user``/``--socket-group`` (names or numbers) as the ``(uid, gid)``
    chown(2) takes, -1 for the one not given; None when neither is.

    Raises:
        UsageError: no such user or group.
    """
    if user is None and group is None:
        return None
    uid = resolve_user(user, "--socket-user")[0] if user is not None else -1
    gid = resolve_group(group, "--socket-group") if group is not None else -1
    return uid, gid


class Identity:
    """Who the server becomes after binding: ``uid`` (None: unchanged), ``gid``, and the
    user ``name`` whose supplementary groups it takes (None: just ``gid``)."""

    __slots__ = ("gid", "name", "uid")

    def __init__(self, uid: int | None, gid: int, name: str | None) -> None:
        self.uid = uid
        self.gid = gid
        self.name = name


def resolve_identity(user: str | None, group: str | None) -> Identity | None:
    """Look up ``--user`` and ``--group`` (names or numbers), at start-up.

    With ``--user`` alone the group is the user's primary group; ``--group`` alone
    changes only the group (and clears supplementary groups).

    Raises:
        UsageError: an unknown user or group, or a bare uid without ``--group``.
    """
    if user is None and group is None:
        return None
    uid, gid, name = resolve_user(user) if user is not None else (None, None, None)
    if group is not None:
        gid = resolve_group(group)
    if gid is None:
        raise UsageError(f"--user {user!r} has no passwd entry: give --group too")
    return Identity(uid, gid, name)


# Modules the server may import lazily after the switch (json quotes an odd log value,
# traceback reports a handler's exception, shlex writes the listen line's program,
# which is logged after the switch so that a program the user cannot run stops the
# server first): loaded before it, since the new user may not be able to read the
# Python installation (a Python under /root, say).
# SIGHUP and SIGUSR2 import their modules when first used, which may be after the switch.
LATE_IMPORTS = ("json", "traceback", "shlex", "forkserve.config.reload", "forkserve.parent.upgrade")


def switch_identity(identity: Identity) -> None:
    """Become ``identity``: supplementary groups (initgroups(3)), gid, then uid, in
    that order (once the uid changes, the groups cannot). Afterwards getting root
    back must fail, which is checked.

    Raises:
        TemporaryError: the system refused (not running as root: EPERM).
    """
    import importlib

    for module in LATE_IMPORTS:
        importlib.import_module(module)
    try:
        if identity.name is not None:
            os.initgroups(identity.name, identity.gid)
        else:
            os.setgroups([identity.gid])
        os.setgid(identity.gid)
        if identity.uid is not None:
            os.setuid(identity.uid)
    except PermissionError:
        who = identity.name or (identity.uid if identity.uid is not None else identity.gid)
        kind = "user" if identity.uid is not None else "group"
        raise TemporaryError(
            f"cannot switch to {kind} {who}: permission denied (not root?)"
        ) from None
    if identity.uid is not None and identity.uid != 0:
        check_dropped()


def describe_identity(identity: Identity) -> str:
    """``user NAME``, ``uid N`` or ``group N``, for messages."""
    if identity.uid is None:
        return f"group {identity.gid}"
    return f"user {identity.name}" if identity.name is not None else f"uid {identity.uid}"


def unreadable(paths: list[str]) -> list[str]:
    """Those of ``paths`` this process cannot read (access(2), real ids: after the
    switch, the new user's)."""
    return [path for path in paths if not os.access(path, os.R_OK)]


def is_current(identity: Identity) -> bool:
    """Whether this process already runs as ``identity``: a new master started by a
    SIGUSR2 upgrade inherits the old one's, and could not switch again."""
    return (identity.uid is None or os.geteuid() == identity.uid) and os.getegid() == identity.gid


def check_dropped() -> None:
    """Fail loudly if root can be regained after the drop (it must not be)."""
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise TemporaryError("dropping privileges failed: setuid(0) still works")


# The largest limit Python's setrlimit takes (a C long long; RLIM_INFINITY is -1 there).
RLIMIT_MAX = 2**63 - 1


def rlimit_triples(limits: Mapping[str, int], reusable: bool) -> tuple[tuple[int, int, int], ...]:
    """The ``(resource, soft, hard)`` triples a child sets (see child.prelude.apply_rlimits).

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
        if value > RLIMIT_MAX:  # setrlimit would raise OverflowError in every child
            raise UsageError(f"--limit-{name} {value} is too large: at most {RLIMIT_MAX}")
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
