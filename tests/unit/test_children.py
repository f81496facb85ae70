from __future__ import annotations

import os
import signal

from forkserve.parent.children import ChildTable


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


def test_a_child_counts_once_its_header_names_its_client() -> None:
    table = ChildTable()
    waiting = table.add(_spawn(None), "127.0.0.1:1", None).pid  # reading its header
    refused = table.add(_spawn(None), "127.0.0.1:2", None).pid
    assert (table.open_from(-1), table.open_from(7)) == (0, 0)
    table.advertise(waiting, "192.0.2.7:9", 7)
    table.advertise(waiting, "192.0.2.7:9", 8)  # counted once, on the first source
    table.advertise(refused, "192.0.2.8:9", None)  # named, refused: counts nowhere
    table.advertise(12345678, "192.0.2.9:9", 7)  # not ours (reaped): ignored
    assert (table.open_from(7), table.open_from(8)) == (1, 0)
    assert [table.get(pid).peer for pid in (waiting, refused)] == ["192.0.2.7:9", "192.0.2.8:9"]  # type: ignore[union-attr]
    for pid in (waiting, refused):
        os.kill(pid, signal.SIGKILL)
    reaped: set[int] = set()
    while len(reaped) < 2:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        reaped.update(e.pid for e in table.reap())
    assert (table.open_from(7), len(table)) == (0, 0)  # released on the same source
