"""An async worker's questions to the supervisor about the per-source limits.

The questions and answers are child.ask's (core.gate's format), on the worker's own
channel; here they are sent without waiting and answered in order, one future each,
so a worker's loop never blocks on the supervisor.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket

from forkserve.core.gate import QUESTION_SIZE, decode_answer


class Asking:
    """Questions to the supervisor about the per-source limits (see child.ask), on
    the worker's channel: sent at once, answered in order, each a future.

    Resource handling: the channel is the worker's (non-blocking from here on).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, channel: socket.socket) -> None:
        self.loop = loop
        self.channel = channel
        channel.setblocking(False)
        self.waiting: collections.deque[asyncio.Future[int]] = collections.deque()
        loop.add_reader(channel.fileno(), self.on_answer)

    def ask(self, question: bytes) -> asyncio.Future[int]:
        """Send ``question``; the future's result is the answer (0: refused).

        A datagram this small fits the channel's buffer unless thousands of
        questions wait unanswered: the supervisor is gone or stuck, and the worker
        leaves, as a prefork worker does (child.ask, ``Asker.ask``).
        """
        try:
            self.channel.send(question)
        except (BlockingIOError, ConnectionError):
            os._exit(0)
        future: asyncio.Future[int] = self.loop.create_future()
        self.waiting.append(future)
        return future

    def on_answer(self) -> None:
        while self.waiting:
            try:
                data = self.channel.recv(QUESTION_SIZE)
            except BlockingIOError:
                return
            except ConnectionError:
                data = b""
            if not data:
                os._exit(0)  # the supervisor is gone: no one to serve for
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(decode_answer(data))
