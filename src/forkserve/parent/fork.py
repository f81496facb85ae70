"""The fork step: one child process per connection."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

from forkserve.child.handler import EXIT_HANDLER_RAISED
from forkserve.parent.signals import block, unblock


def fork_child(run: Callable[[], int], close_parent_resources: Callable[[], None]) -> int:
    """Fork a child that runs ``run()`` and exits with its result; return its pid.

    The child becomes the leader of a process group of its own, so that a terminal's
    Ctrl-C reaches only the parent (which then drains gracefully) and so that the
    parent can signal the child together with anything it started. Both sides call
    setpgid, the usual way to close the race with a parent that signals at once.

    In the child, ``close_parent_resources`` first undoes the parent's set-up (the
    listeners, the selector, the signal pipe and handlers); then ``run`` runs; the
    child always ends with ``os._exit`` and never returns into the parent's loop.

    The server's signals are blocked across fork(2): a signal that reached the child
    before it reset its handlers would otherwise run the parent's no-op handler (and
    be lost) and write its number into the parent's wakeup pipe (and be taken as the
    parent's own). The child unblocks them only once they are back to SIG_DFL.

    Resource handling: the caller still owns, in the parent, what ``run`` uses.

    Raises:
        OSError: fork(2) failed (EAGAIN, ENOMEM); nothing was started.
    """
    block()
    try:
        pid = os.fork()
    except OSError:
        unblock()
        raise
    if pid:
        unblock()
        try:
            os.setpgid(pid, pid)
        except (ProcessLookupError, PermissionError):
            pass  # the child already exited, or already exec'd after its own setpgid
        return pid
    status = EXIT_HANDLER_RAISED
    try:
        # Everything the child inherited is the parent's: move it out of the
        # collector's reach (a list splice, O(1)), so a collection in the child scans
        # only the child's own objects and never copies the parent's pages to do it.
        gc.freeze()
        os.setpgid(0, 0)
        close_parent_resources()
        unblock()
        status = run()
    except BaseException:  # noqa: BLE001 - a bug in the set-up: report it, never return
        import traceback

        traceback.print_exc()
    finally:
        os._exit(status)
