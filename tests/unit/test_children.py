from __future__ import annotations

import os
import signal

from forkserve._children import ChildTable


def _spawn(exit_code: int | None) -> int:
    """A real child that exits with ``exit_code``, or waits to be killed (None)."""
    pid = os.fork()
    if pid == 0:
        if exit_code is None:
            signal.pause()
        os._exit(exit_code or 0)
    return pid


def test_per_source_counts_drop_however_a_child_ends() -> None:
    table = ChildTable()
    a = table.add(_spawn(0), "10.0.0.1:1", 1).pid
    b = table.add(_spawn(3), "10.0.0.1:2", 1).pid
    c = table.add(_spawn(None), "10.0.0.2:1", 2).pid
    assert (table.open_from(1), table.open_from(2), len(table)) == (2, 1, 3)
    os.kill(c, signal.SIGKILL)
    seen: dict[int, dict[str, object]] = {}
    while len(seen) < 3:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)  # block until one is ready
        seen.update((e.pid, e.status_fields()) for e in table.reap())
    assert seen == {a: {"exit": 0}, b: {"exit": 3}, c: {"signal": "SIGKILL(9)"}}
    assert (table.open_from(1), table.open_from(2), len(table)) == (0, 0, 0)
