"""Admission and lifetime: what the parent enforces per connection (issue 6).

The gate's verdict before fork (access rules, per-source limits: a refused client
costs no process); behind the PROXY protocol, the answers to the questions children
ask once their header named the client (see child.ask); and ``--max-lifetime``: SIGTERM
to a connection's process group once it has lasted that long, SIGKILL
LIFETIME_KILL_AFTER seconds later. An object the loop holds and the process
models call (see parent.loop).
"""

from __future__ import annotations

import signal
import socket
import time

from forkserve.child.ask import refuse
from forkserve.core.gate import (
    QUESTION_SIZE,
    Policy,
    Timers,
    Verdict,
    decode_question,
    encode_answer,
)
from forkserve.parent.children import Child, Exited

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from forkserve.parent.loop import Loop

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
    """The gate, the children's questions and the lifetime timers, for ``loop``.

    Resource handling: owns the fork-mode children's question channels (registered
    in the loop's selector until answered or reaped).
    """

    __slots__ = ("kills", "lifetimes", "log", "loop", "open_from", "policy", "questions")

    def __init__(self, loop: Loop, policy: Policy) -> None:
        self.loop = loop
        self.log = loop.log
        self.policy = policy
        # Connections open per source: fork-mode children and busy prefork workers.
        self.open_from = loop.children.counts.open_from
        # Behind the PROXY protocol: each fork-mode child's question channel, by pid.
        self.questions: dict[int, socket.socket] = {}
        # --max-lifetime: a FIFO of deadlines (all the same length), then of kills.
        lifetime = policy.max_lifetime
        self.lifetimes = Timers(lifetime, self.current) if lifetime else None
        self.kills = Timers(LIFETIME_KILL_AFTER, self.current)

    def take(self, policy: Policy) -> None:
        """A reload's policy applies from the next connection; the gate keeps the
        running counts (see Gate.take_over)."""
        policy.gate.take_over(self.policy.gate)
        self.policy = policy

    def admit(self, conn: socket.socket, peer_text: str, host: str) -> Verdict | None:
        """The gate's verdict on a connection; None when it was refused (and closed)."""
        verdict = self.policy.gate.check(host, time.monotonic(), self.open_from)
        if verdict.allowed:
            return verdict
        self.refuse(conn, peer_text, verdict)
        return None

    def refuse(self, conn: socket.socket, peer_text: str, verdict: Verdict) -> None:
        """Close a refused connection at once and log ``deny`` or ``reject``; a client
        refused by a limit first gets ``--reject-message`` (see ``refuse``)."""
        refuse(conn, self.policy.reject_message if verdict.reason != "deny" else b"")
        self.loop.metrics.rejected(verdict.reason)
        if verdict.reason == "deny":
            self.loop.events.deny(peer_text, verdict.rule)
        else:
            self.loop.events.reject(peer_text, verdict.reason)

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
            self.loop.metrics.rejected("deny")
            return None, peer, b""
        verdict = Verdict(True, "", "", {}, source)
        self.policy.gate.check_limits(verdict, now, self.open_from)
        if not verdict.allowed:
            self.loop.metrics.rejected(verdict.reason)
            self.loop.events.reject(peer, verdict.reason, pid)
            return None, peer, encode_answer(0)
        return source, peer, encode_answer(self.open_from(source) + 1)

    def watch_question(self, pid: int, channel: socket.socket) -> None:
        """Answer fork-mode child ``pid``'s question from the loop when it comes
        (``channel`` is non-blocking)."""
        self.questions[pid] = channel
        self.loop.watch(channel, lambda mask: self.on_question(pid))

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
            self.loop.children.advertise(pid, peer, source)
            if answer:
                send_answer(channel, answer)
        self.drop_question(pid)
        return peer

    def close_question(self, pid: int) -> str:
        """Close a reaped child's question channel, after reading what it sent just
        before it exited (a ``D`` report); return the client it named, if any."""
        if not self.questions:
            return ""
        peer = self.on_question(pid)
        self.drop_question(pid)
        return peer

    def drop_question(self, pid: int) -> None:
        channel = self.questions.pop(pid, None)
        if channel is not None:
            self.loop.unwatch(channel)
            channel.close()

    def close_in_child(self) -> None:
        """In a new child: the other children's channels are the parent's."""
        for channel in self.questions.values():
            channel.close()

    # -- --max-lifetime -----------------------------------------------------------------
    # Timers are keyed by connection (fork mode: its Child record; prefork: see
    # prefork.pool), never by pid: pid_max is 32768 here, so at 1,000 forks a second a
    # pid comes round in about 30 s, and a reused pid took the old deadline along.

    def start_lifetime(self, child: Child) -> None:
        """A connection's process was forked: time it from its start."""
        if self.lifetimes is not None:
            self.lifetimes.add(child, child.started)

    def forget(self, ended: Exited) -> None:
        """Reaped: drop the timers of what ended, so none waits for its deadline."""
        if ended.child is not None:
            if self.lifetimes is not None:
                self.lifetimes.discard(ended.child)
            self.kills.discard(ended.child)

    def kill_later(self, child: Child, now: float) -> None:
        """SIGKILL to ``child``'s group LIFETIME_KILL_AFTER seconds from ``now``,
        unless it is reaped first."""
        self.kills.add(child, now)

    def deadline(self) -> float | None:
        first = self.lifetimes.next_deadline() if self.lifetimes is not None else None
        kill = self.kills.next_deadline()
        if first is None or kill is None:
            return kill if first is None else first
        return min(first, kill)

    def on_deadline(self, now: float) -> None:
        if self.lifetimes is not None:
            for key in self.lifetimes.due(now):
                self.end_lifetime(key, now)
        for key in self.kills.due(now):
            assert isinstance(key, Child)
            self.log.warning("kill", pid=key.pid, signal="SIGKILL", reason="max-lifetime")
            self.loop.children.signal(key.pid, signal.SIGKILL)

    def current(self, key: object) -> bool:
        """Whether a timer's connection (its Child) still runs."""
        return isinstance(key, Child) and self.loop.children.get(key.pid) is key

    def end_lifetime(self, key: object, now: float) -> None:
        """A connection reached --max-lifetime: SIGTERM to its process group now,
        SIGKILL LIFETIME_KILL_AFTER seconds later if it is still there."""
        assert isinstance(key, Child)
        after = f"{self.policy.max_lifetime:g}s"
        self.log.info("max-lifetime", pid=key.pid, peer=key.peer, after=after, signal="SIGTERM")
        self.loop.children.signal(key.pid, signal.SIGTERM)
        self.kills.add(key, now)
