"""Admission decided in the connection's process, and the question it asks the parent.

Two cases need it. Behind the PROXY protocol the client is known only once the
header is read, in the connection's process (a fork-mode child, a prefork worker),
and the rules and limits must judge that client, not the balancer (the HAProxy PROXY
specification, section 3). In prefork mode the per-source limits need every worker's
connections, which only the supervisor sees. Either way the connection's process
applies the access rules itself (they are pure, and it holds the gate's copy) and
asks the supervisor about the per-source limits, on a SOCK_SEQPACKET channel of its
own: a prefork worker's lasts as long as the worker, a fork-mode child's is made just
before its fork and closed once answered. One datagram each way:

    SOURCE PEER   may this connection be served? SOURCE is the key it counts against
                  (core.gate.source_key), PEER the client for the logs. Answered
                  ``ok CONNNUM`` (counted now: its TCPCONNNUM) or ``no`` (refused by
                  a limit; the supervisor logged ``reject``).
    D PEER        the rules denied it (the asker logged ``deny``): for the metrics,
                  and for the ``end`` line's peer. Not answered. (A prefork worker
                  sends it on its status socket instead, as ``D PID PEER``.)

The messages are written and read by the pure functions in core.gate; the supervisor
reads and answers from its loop (parent.admission.Admission.judge, for both process
models): its end is non-blocking, and an answer to a process that has gone is
dropped (``read_question``, ``send_answer``).
"""

from __future__ import annotations

import os
import socket

from forkserve._log import Log
from forkserve.child.edge import EXIT_EDGE_FAILED
from forkserve.core.address import format_address, host_of
from forkserve.core.gate import (
    QUESTION_SIZE,
    Policy,
    decode_answer,
    encode_denied,
    encode_question,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Callable

    from forkserve.child.connection import Connection

# How long a connection's process waits for the supervisor's answer. The supervisor
# answers at once, from its loop; no answer in this long means it is gone or stuck,
# and the process leaves.
ASK_TIMEOUT = 10.0


def refuse(conn: socket.socket, message: bytes) -> None:
    """Close a refused connection at once (the parent before fork, or a connection's
    process after the rules or limits refused it), after ``message`` if any.

    The message is sent with MSG_DONTWAIT: a fresh connection's send buffer is empty,
    so it goes out whole, and a client that is gone or not reading never blocks.
    """
    if message:
        try:
            conn.send(message, socket.MSG_DONTWAIT)
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass  # the client left or is not reading: it is refused all the same
    conn.close()


class Asker:
    """Admission in the connection's process: the rules here, the limits by asking.

    Args:
        policy: the gate (its rules) and ``--reject-message``, as forked.
        log: where ``deny`` goes.
        channel: the question channel; None when there are no limits to ask about
            (a prefork worker without per-source limits or PROXY).
        report: how a prefork worker reports a denial (``report("D", peer)`` on
            its status socket, where it stays in order with the ``E`` report that
            follows it); without it, a ``D`` goes on the channel.
        single: a fork-mode child's channel: closed once used.

    Resource handling: a refused connection is closed here.
    """

    __slots__ = ("channel", "log", "policy", "report", "single")

    def __init__(
        self,
        policy: Policy,
        log: Log,
        channel: socket.socket | None,
        *,
        report: Callable[[str, str], None] | None = None,
        single: bool = False,
    ) -> None:
        self.policy = policy
        self.log = log
        self.channel = channel
        self.report = report
        self.single = single

    def __call__(self, conn: socket.socket, info: Connection) -> int | None:
        """Decide for ``info.peer`` (the client the PROXY header named)."""
        return self.admit(conn, info, format_address(info.peer))

    def admit(self, conn: socket.socket, info: Connection, peer_text: str) -> int | None:
        """Apply the rules, then ask about the limits. Admitted: ``info`` gets the
        rule's variables and its TCPCONNNUM, and None is returned. Refused: ``conn``
        is closed (after ``--reject-message`` for a limit) and EXIT_EDGE_FAILED is
        returned: the connection ended before its handler."""
        verdict = self.policy.gate.check_rules(host_of(info.peer))
        if not verdict.allowed:
            conn.close()
            self.log.info("deny", pid=os.getpid(), peer=peer_text, rule=verdict.rule)
            if self.report is not None:  # a worker: in order with its "E" report
                self.report("D", peer_text)
            elif self.channel is not None:
                self.ask(encode_denied(peer_text), answered=False)
            return EXIT_EDGE_FAILED
        if self.channel is not None:
            connnum = self.ask(encode_question(verdict.source, peer_text))
            if not connnum:
                refuse(conn, self.policy.reject_message)
                return EXIT_EDGE_FAILED
            info.connnum = connnum
        info.env = verdict.env
        return None

    def ask(self, question: bytes, answered: bool = True) -> int:
        """Send ``question``; return the answer (see ``decode_answer``), or 0 for a
        question that gets none. No answer at all: the supervisor is gone or stuck,
        there is no one to serve for, and the process exits.
        """
        assert self.channel is not None
        try:
            self.channel.send(question)
            answer = self.channel.recv(QUESTION_SIZE) if answered else b"-"
        except (TimeoutError, ConnectionError):
            answer = b""
        if self.single:
            self.channel.close()
        if not answer:
            os._exit(0)
        return decode_answer(answer)
