"""Admission and lifetime: what the parent enforces per connection (issue 6).

The gate's verdict before fork (access rules, per-source limits: a refused client
costs no process); behind the PROXY protocol, the answers to the questions children
ask once their header named the client (see child.ask); and ``--max-lifetime``: SIGTERM
to a connection's process group once it has lasted that long, SIGKILL
LIFETIME_KILL_AFTER seconds later. A mixin of ``Supervisor``, beside ``Operations``.
"""

from __future__ import annotations

import selectors
import signal
import socket
import time

from forkserve._log import Log
from forkserve.child.ask import refuse
from forkserve.core.gate import (
    QUESTION_SIZE,
    Gate,
    Policy,
    Timers,
    Verdict,
    decode_question,
    encode_answer,
)
from forkserve.parent.children import Child, ChildTable, Exited

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from forkserve.core.metrics import Metrics
    from forkserve.parent.operations import NoMetrics

# A connection past --max-lifetime gets SIGTERM, then SIGKILL this much later.
LIFETIME_KILL_AFTER = 1.0


def read_question(channel: socket.socket) -> bytes | None:
    """One question from a non-blocking channel: None when there is none yet, b""
    when the asker has gone (end of file, or reset)."""
    try:
        return channel.recv(QUESTION_SIZE)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return b""


def send_answer(channel: socket.socket, answer: bytes) -> None:
    """Answer without blocking: a datagram this small always fits an empty buffer,
    and an asker that has gone is reaped and released like any other."""
    try:
        channel.send(answer, socket.MSG_DONTWAIT)
    except (BlockingIOError, BrokenPipeError, ConnectionResetError):
        pass


class Admission:
    """The gate, the children's questions and the lifetime timers, for the loop
    (which provides the rest)."""

    policy: Policy
    gate: Gate
    log: Log
    children: ChildTable
    sel: selectors.BaseSelector
    questions: dict[int, socket.socket]  # fork-mode children's channels, by pid
    lifetimes: Timers | None
    lifetime_kills: Timers
    metrics: Metrics | NoMetrics

    def admit(self, conn: socket.socket, peer_text: str, host: str) -> Verdict | None:
        """The gate's verdict on a connection; None when it was refused (and closed)."""
        verdict = self.gate.check(host, time.monotonic(), self.open_from)
        if verdict.allowed:
            return verdict
        self.refuse(conn, peer_text, verdict)
        return None

    def refuse(self, conn: socket.socket, peer_text: str, verdict: Verdict) -> None:
        """Close a refused connection at once and log ``deny`` or ``reject``; a client
        refused by a limit first gets ``--reject-message`` (see ``refuse``)."""
        refuse(conn, self.policy.reject_message if verdict.reason != "deny" else b"")
        self.metrics.rejected(verdict.reason)
        if verdict.reason == "deny":
            self.log.info("deny", peer=peer_text, rule=verdict.rule)
        else:
            self.log.info("reject", peer=peer_text, reason=verdict.reason, conns=self.active())

    def open_from(self, source: int) -> int:
        """Connections being served for ``source`` (see core.gate.source_key)."""
        return self.children.open_from(source)

    # -- questions from connections' processes (see child.ask) -------------------------------

    def judge(self, question: bytes, now: float, pid: int) -> tuple[int | None, str, bytes]:
        """Decide on a question from process ``pid``: the per-source limits, counted
        in the metrics and logged (a ``D`` report was logged by the asker).

        Returns:
            ``(source, peer, answer)``: the source to count the connection against
            from now on (None: refused), its client, and the answer to send (b"":
            none is expected).
        """
        try:
            source, peer = decode_question(question)
        except ValueError:  # not an asker's: a handler wrote on a worker's channel
            return None, "", encode_answer(0)
        if source is None:
            self.metrics.rejected("deny")
            return None, peer, b""
        verdict = Verdict(True, "", "", {}, source)
        self.gate.check_limits(verdict, now, self.open_from)
        if not verdict.allowed:
            self.metrics.rejected(verdict.reason)
            self.log.info("reject", pid=pid, peer=peer, reason=verdict.reason, conns=self.active())
            return None, peer, encode_answer(0)
        return source, peer, encode_answer(self.open_from(source) + 1)

    def watch_question(self, pid: int, channel: socket.socket) -> None:
        """Answer fork-mode child ``pid``'s question from the loop when it comes
        (``channel`` is non-blocking)."""
        self.questions[pid] = channel
        self.sel.register(channel, selectors.EVENT_READ, lambda mask: self.on_question(pid))

    def on_question(self, pid: int) -> str:
        """A child's header named its client: count it against the client's source
        (its ``end`` line names the client too), or refuse it; then close the channel.

        Returns:
            The client named, or "" when there was no question (yet).
        """
        channel = self.questions.get(pid)
        if channel is None:
            return ""  # reaped earlier in this turn of the loop: the event predates it
        question = read_question(channel)
        if question is None:
            return ""
        peer = ""
        if question:
            source, peer, answer = self.judge(question, time.monotonic(), pid)
            self.children.advertise(pid, peer, source)
            if answer:
                send_answer(channel, answer)
        self.drop_question(pid)
        return peer

    def close_question(self, pid: int) -> str:
        """Close a reaped child's question channel, after reading what it sent just
        before it exited (a ``D`` report); return the client it named, if any."""
        peer = self.on_question(pid)
        self.drop_question(pid)
        return peer

    def drop_question(self, pid: int) -> None:
        channel = self.questions.pop(pid, None)
        if channel is not None:
            self.sel.unregister(channel)
            channel.close()

    def close_questions_in_child(self) -> None:
        """In a new child: the other children's channels are the parent's."""
        for channel in self.questions.values():
            channel.close()

    # -- --max-lifetime -----------------------------------------------------------------
    # Timers are keyed by connection (fork mode: its Child record; prefork: see
    # PreforkLoop), never by pid: pid_max is 32768 here, so at 1,000 forks a second a
    # pid comes round in about 30 s, and a reused pid took the old deadline along.

    def start_lifetime(self, child: Child) -> None:
        """A connection's process was forked: time it from its start."""
        if self.lifetimes is not None:
            self.lifetimes.add(child, child.started)

    def forget_lifetimes(self, exits: list[Exited]) -> None:
        """Reaped: drop the timers of what ended, so none waits for its deadline."""
        for ended in exits:
            if ended.child is not None:
                if self.lifetimes is not None:
                    self.lifetimes.discard(ended.child)
                self.lifetime_kills.discard(ended.child)

    def lifetime_deadlines(self) -> tuple[float | None, ...]:
        lifetimes = self.lifetimes.next_deadline() if self.lifetimes is not None else None
        return lifetimes, self.lifetime_kills.next_deadline()

    def on_lifetime_deadlines(self, now: float) -> None:
        if self.lifetimes is not None:
            for key in self.lifetimes.due(now):
                self.end_lifetime(key, now)
        for key in self.lifetime_kills.due(now):
            assert isinstance(key, Child)
            self.log.warning("kill", pid=key.pid, signal="SIGKILL", reason="max-lifetime")
            self.children.signal(key.pid, signal.SIGKILL)

    def lifetime_current(self, key: object) -> bool:
        """Whether a lifetime timer's connection (its Child) still runs."""
        return isinstance(key, Child) and self.children.get(key.pid) is key

    def kill_current(self, key: object) -> bool:
        return isinstance(key, Child) and self.children.get(key.pid) is key

    def end_lifetime(self, key: object, now: float) -> None:
        """A connection reached --max-lifetime: SIGTERM to its process group now,
        SIGKILL LIFETIME_KILL_AFTER seconds later if it is still there."""
        assert isinstance(key, Child)
        after = f"{self.policy.max_lifetime:g}s"
        self.log.info("max-lifetime", pid=key.pid, peer=key.peer, after=after, signal="SIGTERM")
        self.children.signal(key.pid, signal.SIGTERM)
        self.lifetime_kills.add(key, now)

    def active(self) -> str:
        raise NotImplementedError
