"""A fresh process for an exec'd program: what exec mode and the TLS relay both do
before ``execve`` (child.exec, child.relay).
"""

from __future__ import annotations

import os
import signal
import socket

# Signals a process cannot catch or ignore: leave them alone.
UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


def reset_process(conn: socket.socket, log_fd: int) -> None:
    """Give the program a process as a fresh exec from a shell would: the socket on
    fd 0 and 1, the server's stderr on 2, nothing else open, every signal at its
    default (SIGPIPE too: Python ignores it, tcpserver's children get it), no signal
    blocked, no wakeup fd.

    Resource handling: ``log_fd`` stays open but close-on-exec, so a failed exec can
    still be logged; ``conn``'s own descriptor is closed (fd 0 and 1 are copies).
    """
    signal.set_wakeup_fd(-1)
    # valid_signals() already leaves out the real-time signals glibc reserves (32, 33).
    for sig in signal.valid_signals():
        if sig not in UNCATCHABLE:
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    fd = conn.fileno()
    for target in (0, 1):
        if fd != target:
            os.dup2(fd, target)
        else:
            os.set_inheritable(target, True)
    conn.detach()
    if fd == 2:  # stderr was closed when forkserve started: the socket got fd 2
        os.close(2)
    keep = log_fd if log_fd > 2 else 2
    # One close_range(2) each on Linux 5.9+, up to the highest descriptor open.
    limit = highest_open_fd() + 1
    os.closerange(3, keep)
    os.closerange(keep + 1, limit)
    if keep > 2:
        os.set_inheritable(keep, False)


def highest_open_fd() -> int:
    """The highest descriptor this process has open, from /proc/self/fd.

    Not the RLIMIT_NOFILE limit: ``--limit-nofile`` has lowered it by now, and a
    descriptor inherited above it (a wrapper's ``exec 200>lock; flock 200``) stays
    open; nor a huge bound, which costs a close(2) per number where close_range(2)
    is missing or refused (a seccomp filter), as CPython then loops. Without /proc,
    the limit is all there is.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # /proc not mounted
        return os.sysconf("SC_OPEN_MAX")
    return max((int(name) for name in names), default=2)
