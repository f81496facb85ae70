"""The forker's channel: what the supervisor and the forker say to each other.

One AF_UNIX SOCK_SEQPACKET socketpair; each record is ``marshal`` of a list of
items (several per record when a burst comes), a connection's descriptors riding
along as SCM_RIGHTS in the order of its items. ``marshal`` handles the tuples,
strings, bytes, numbers, dicts and None a ``child.connection.Connection`` holds
(an IP peer is a tuple, a Unix one a path), and is the cheapest serializer there is.

Supervisor to forker (after the first record, the recipe: see forker.process):

    (CONN, id, peer, connnum, env, local, nfds)   fork a process for this
        connection; its socket comes as a descriptor, then (nfds 2: behind the
        PROXY protocol) the question channel the child asks on (child.ask)
    (KILL, pid, signal)                           signal a child's process group
    (POOL,)        prefork: the descriptors every worker shares (the listener, the
        status socket, the alive pipe's read end), once per forker, before any WORKER
    (WORKER, id, params, nfds)   fork a prefork worker (``params``: its
        max_requests); nfds 1: its question channel (child.ask) rides along
    (SIGNAL, pid, signal)                         signal one child (a worker) alone

Forker to supervisor:

    (READY, pid) / (FAILED, exit code, message)   once, after the recipe
    (STARTED, id, pid)     the connection's process runs (a worker's: sent by the
        worker itself, before its first status report, so the supervisor knows its
        pid before it reads what the worker says: see forker.workers)
    (EXITED, pid, status)  it was reaped: the waitpid status
    (NOFORK, id, errno)    fork failed: the connection is closed
    (LOST, id, errno)      its descriptors did not arrive (EMFILE: MSG_CTRUNC)
"""

from __future__ import annotations

import marshal

CONN = "C"
KILL = "K"
READY = "R"
FAILED = "E"
STARTED = "S"
EXITED = "X"
NOFORK = "F"
LOST = "L"
POOL = "P"
WORKER = "W"
SIGNAL = "G"
# The items that start a process, each answered STARTED, NOFORK or LOST.
LAUNCHES = (CONN, WORKER)

# A record's size at most; a batch is cut well below it (see MAX_BATCH).
RECORD_SIZE = 1 << 16
# Items and descriptors in one record at most: the kernel passes 253 descriptors in
# one message (SCM_MAX_FD), and a connection takes two behind the PROXY protocol.
MAX_BATCH = 64


def encode(items: list[tuple[object, ...]]) -> bytes:
    return marshal.dumps(items)


def decode(record: bytes) -> list[tuple[object, ...]]:
    """The items of one record.

    Raises:
        ValueError: not a record of this protocol (a bug on the other side).
    """
    try:
        items = marshal.loads(record)  # noqa: S302 - from our own supervisor or forker
    except (EOFError, TypeError, ValueError) as exc:
        raise ValueError(f"bad forker record: {exc}") from None
    if not isinstance(items, list):
        raise ValueError("bad forker record: not a list")  # noqa: TRY004 - one error for all
    return items
