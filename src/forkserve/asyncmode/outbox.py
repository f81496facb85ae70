"""What a worker owes the supervisor: its connection reports and its --max-conns tokens.

The tokens are the eventfd(2) semaphore every worker shares (see asyncmode.worker);
the worker also counts the ones it holds, in its slot of a page it shares with the
supervisor, which gives back a dead worker's count when it reaps it. The count goes
up just after a token is taken and down just before one is given back: a death
between the two leaks a token at worst, never gives one back twice.

A and E reports of one turn of the loop go out together at its end (``flush``): one
datagram, ``M pid`` with a report a line (a lone report as it is), then the tokens
of the connections they end, in one eventfd write, after their reports (so a
connection another worker accepts with such a token is reported after this end,
and the supervisor's count never reads over the limit). Under a burst of short
connections that is one wakeup of the supervisor for several reports.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

# A batch (``M``) stays under the supervisor's datagram buffer (prefork.wire
# STATUS_SIZE, 4096 bytes), with room for the kind and pid.
REPORTS_SIZE = 3500


class Outbox:
    """A worker's tokens and pending reports (see the module docstring).

    Resource handling: ``tokens`` is the worker's copy of the eventfd, closed when
    the worker exits; ``held`` is a view of the shared page.
    """

    __slots__ = ("held", "loop", "owed", "pending", "send", "slot", "tokens")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[str, str], None],
        tokens: int,
        held: memoryview,
        slot: int,
    ) -> None:
        self.loop = loop
        self.send = send  # the worker's report(kind, detail): one datagram
        self.tokens = tokens
        self.held = held
        self.slot = slot
        self.pending: list[str] = []  # A and E reports not sent yet
        self.owed = 0  # tokens of ended connections, given back at the flush

    def take(self) -> bool:
        """A token for one accept; False at --max-conns (the eventfd is at 0)."""
        try:
            os.eventfd_read(self.tokens)
        except BlockingIOError:
            return False
        self.held[self.slot] += 1
        return True

    def give_back(self) -> None:
        """A token back now (a connection that was never reported)."""
        self.held[self.slot] -= 1
        os.eventfd_write(self.tokens, 1)

    def report(self, line: str) -> None:
        """An ``A N PEER`` or ``E N CODE`` report, sent at the end of this turn."""
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append(line)

    def end(self, line: str) -> None:
        """An E report, and its connection's token back after it."""
        self.report(line)
        self.owed += 1

    def flush(self) -> None:
        """Send what is pending, then give back what is owed."""
        reports, self.pending = self.pending, []
        if len(reports) == 1:
            kind, _, detail = reports.pop().partition(" ")
            self.send(kind, detail)
        while reports:
            batch = [reports.pop(0)]
            size = len(batch[0])
            while reports and size + 1 + len(reports[0]) < REPORTS_SIZE:
                size += 1 + len(reports[0])
                batch.append(reports.pop(0))
            self.send("M", "\n".join(batch))
        if self.owed:
            owed, self.owed = self.owed, 0
            self.held[self.slot] -= owed
            os.eventfd_write(self.tokens, owed)
