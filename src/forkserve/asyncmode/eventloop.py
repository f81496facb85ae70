"""The worker's event loop: accept from the shared listener, serve each connection
as a task, report to the supervisor (see asyncmode.worker for the protocol).

Accepts are spread by a shared socket, as prefork's are: every worker watches the
one listener. With SO_REUSEPORT (a socket per worker) the kernel hashes each
connection to a worker, which balances well only while no worker is ever blocked:
a worker stalled by a blocking handler keeps its share of new connections waiting,
while with one queue the other workers take them. A shared socket also serves an
inherited one (socket activation, an upgrade) as it is. Measured with
benchmarks/async_reuseport.py: alike with every loop free; with one loop blocked,
SO_REUSEPORT stalled clients a second and more, the shared socket none
(docs/performance.md, "Async mode").
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
from types import MappingProxyType

from forkserve.asyncmode.asking import Asking
from forkserve.asyncmode.connection import read_proxy, serve
from forkserve.asyncmode.outbox import Outbox
from forkserve.child.ask import refuse
from forkserve.core.address import format_address, host_of
from forkserve.core.errnames import errno_name
from forkserve.core.gate import encode_question
from forkserve.parent.listeners import (
    ACCEPT_BACK_OFF,
    ACCEPT_CLOSED,
    ACCEPT_PAUSE,
    ACCEPT_RETRY,
    accept_action,
    peer_credentials,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    import socket
    from collections.abc import Mapping
    from typing import Any, Protocol

    from forkserve._log import Log
    from forkserve.asyncmode.connection import AsyncService
    from forkserve.core.gate import Policy

    class AsyncWorker(Protocol):
        """What the loop reads of asyncmode.worker's ``AsyncWorker`` (a Protocol, so
        that module, which imports this one to run, is not imported back)."""

        listener: socket.socket
        alive_fd: int
        tokens: int
        policy: Policy
        log: Log
        pid: int
        pending: list[int]
        use_uvloop: bool
        channel: socket.socket | None
        max_conns: int
        epoch: mmap.mmap
        generation: bytes
        held: memoryview
        slot: int

        @property
        def service(self) -> AsyncService: ...

        def report(self, kind: str, detail: str = "") -> None: ...


# Accepts per wakeup at most, so a burst of new clients does not starve the ones
# being served (asyncio's own start_server takes up to its backlog, 100, per turn).
ACCEPT_BATCH = 64
# The loop checks itself this often; a tick this late or later means a handler
# held the loop (time.sleep, a CPU-bound step): reported as ``B``, logged as
# ``loop-blocked`` by the supervisor.
TICK = 0.25
BLOCKED = 0.5
# Descriptors a worker needs beside its connections: the listener, the status
# socket, the alive pipe, the eventfd, the loop's own, a handler's files.
NOFILE_SPARE = 64
# At SIGQUIT, how long cancelled handlers get to run their cleanup.
CANCEL_WAIT = 1.0
# What writer.get_extra_info("env") holds when no rule set a variable.
NO_VARIABLES: Mapping[str, str] = MappingProxyType({})


def new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed and wanted, else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def raise_nofile(needed: int) -> None:
    """A worker holds a descriptor per connection: lift the soft limit to ``needed``
    (--max-conns, and some to spare), the hard one too where it may (root, or
    CAP_SYS_RESOURCE: up to fs.nr_open); else as far as the hard limit goes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or soft == resource.RLIM_INFINITY:
        return
    if needed > hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
        except (ValueError, PermissionError):
            pass  # not ours to raise: as far as the hard limit goes
        else:
            return
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def run_worker(worker: AsyncWorker) -> int:
    """The worker's life: serve until told to stop and every connection has ended."""
    raise_nofile(worker.max_conns + NOFILE_SPARE)
    loop = new_loop(worker.use_uvloop)
    asyncio.set_event_loop(loop)
    served = Served(worker, loop)
    return loop.run_until_complete(served.main())


class Served:
    """The worker's connections and how it accepts them.

    Resource handling: each accepted socket belongs to its task (see
    asyncmode.connection.serve, which closes it).
    """

    def __init__(self, worker: AsyncWorker, loop: asyncio.AbstractEventLoop) -> None:
        self.worker = worker
        self.loop = loop
        self.listener: socket.socket = worker.listener
        self.listen_fd = worker.listener.fileno()
        self.tokens = worker.tokens
        self.outbox = Outbox(loop, worker.report, worker.tokens, worker.held, worker.slot)
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.expired: set[int] = set()  # cancelled at --max-lifetime
        self.number = 0
        self.watching = ""  # "listener", "tokens" or "" (paused, or leaving)
        self.paused: str | None = None  # the errno name while accept lacks a resource
        self.leaving = False
        self.dying = False
        self.done: asyncio.Future[int] = loop.create_future()
        self.due = 0.0
        channel = worker.channel
        self.asking = Asking(loop, channel) if channel is not None else None

    async def main(self) -> int:
        loop = self.loop
        loop.add_signal_handler(signal.SIGTERM, self.leave)
        loop.add_signal_handler(signal.SIGQUIT, self.die)
        for number in self.worker.pending:
            (self.die if number == signal.SIGQUIT else self.leave)()
        loop.add_reader(self.worker.alive_fd, self.leave)
        self.watch("listener")
        self.worker.report("R")
        self.due = loop.time() + TICK
        loop.call_at(self.due, self.tick)
        return await self.done

    # -- accepting ----------------------------------------------------------------

    def watch(self, what: str) -> None:
        """Watch the listener, or the tokens' eventfd (at --max-conns), or nothing."""
        if self.leaving:
            what = ""
        if what == self.watching:
            return
        if self.watching == "listener":
            self.loop.remove_reader(self.listen_fd)
        elif self.watching == "tokens":
            self.loop.remove_reader(self.tokens)
        self.watching = what
        if what == "listener":
            self.loop.add_reader(self.listen_fd, self.on_listener)
        elif what == "tokens":
            self.loop.add_reader(self.tokens, self.watch, "listener")

    def on_listener(self) -> None:
        if self.worker.epoch[:8] != self.worker.generation:
            self.leave()  # a reload replaces this worker: its SIGTERM is on its way
            return
        outbox = self.outbox
        for _ in range(ACCEPT_BATCH):
            if not outbox.take():
                self.watch("tokens")  # at --max-conns: the kernel's queue holds them
                return
            try:
                sock, peer = self.listener.accept()
            except BlockingIOError:
                outbox.give_back()
                return
            except OSError as exc:
                outbox.give_back()
                self.accept_failed(exc)
                return
            if self.paused is not None:
                self.worker.report("U", self.paused)
                self.paused = None
            if type(peer) is not tuple:  # a Unix socket's: the peer is its credentials
                peer = peer_credentials(sock)
            self.start(sock, peer)

    def accept_failed(self, exc: OSError) -> None:
        """The accept errno policy (parent.listeners), as prefork's workers apply it."""
        action = accept_action(exc.errno)
        if action == ACCEPT_RETRY:
            return
        if action == ACCEPT_BACK_OFF:
            if self.paused is None:  # once per burst
                self.paused = errno_name(exc.errno)
                self.worker.report("P", self.paused)
            self.watch("")
            self.loop.call_later(ACCEPT_PAUSE, self.watch, "listener")
            return
        if action == ACCEPT_CLOSED:  # shut down at a stop
            self.leave()
            return
        raise exc

    def start(self, sock: socket.socket, peer: Any) -> None:
        """Admit (the rules here; the per-source limits by asking the supervisor;
        behind PROXY, for the client its header names) and serve it as a task."""
        self.number += 1
        number = self.number
        edge = self.worker.service.edge
        if (edge is not None and edge.proxy) or self.asking is not None:
            task = self.loop.create_task(self.admit(sock, peer, number))
        elif (env := self.allowed(sock, peer)) is not None:
            self.outbox.report(f"A {number} {format_address(peer)}")
            task = self.loop.create_task(self.serve(sock, peer, number, env))
        else:
            return
        self.tasks[number] = task

    def allowed(self, sock: socket.socket, peer: Any) -> Mapping[str, str] | None:
        """The rules, applied here: the variables the allowing rule sets (read-only),
        or None for a denied client, which is closed, logged and reported."""
        gate = self.worker.policy.gate
        if gate.rules is None:
            return NO_VARIABLES
        verdict = gate.check_rules(host_of(peer))
        if verdict.allowed:
            return MappingProxyType(verdict.env) if verdict.env else NO_VARIABLES
        sock.close()
        self.outbox.give_back()
        peer_text = format_address(peer)
        # Counted first, then logged (not batched): a scrape after the line counts it.
        self.worker.report("D", peer_text)
        self.worker.log.info("deny", pid=self.worker.pid, peer=peer_text, rule=verdict.rule)
        return None

    async def admit(self, sock: socket.socket, peer: Any, number: int) -> None:
        """The slow way in: the PROXY header first, then the rules, then the question."""
        edge = self.worker.service.edge
        client = None
        if edge is not None and edge.proxy:
            named = await read_proxy(edge, sock, peer, number)
            if named is None:
                self.forget(number)
                return
            client = named[0]
            peer = client if client is not None else peer
        env = self.allowed(sock, peer)
        if env is None:
            self.forget(number, token=False)
            return
        peer_text = format_address(peer)
        if self.asking is not None:
            gate = self.worker.policy.gate
            source = gate.source(host_of(peer))
            if not await self.asking.ask(encode_question(source, peer_text)):
                refuse(sock, self.worker.policy.reject_message)  # the supervisor logged it
                self.forget(number)
                return
        self.outbox.report(f"A {number} {peer_text}")
        await self.serve(sock, peer, number, env, client)

    def forget(self, number: int, token: bool = True) -> None:
        """A connection that ended before it was served."""
        del self.tasks[number]
        if token:
            self.outbox.give_back()
        self.done_if_left()

    async def serve(
        self,
        sock: socket.socket,
        peer: Any,
        number: int,
        env: Mapping[str, str],
        client: Any = None,
    ) -> None:
        lifetime = self.worker.policy.max_lifetime
        timer = self.loop.call_later(lifetime, self.expire, number, peer) if lifetime else None
        try:
            code = await serve(self.worker.service, sock, peer, env, client)
        except asyncio.CancelledError:
            if number not in self.expired:
                raise  # SIGQUIT: the supervisor logs it with the worker's status
            self.expired.discard(number)
            code = -signal.SIGTERM  # reported as fork mode's child would end
        except Exception:  # noqa: BLE001 - a bug of ours: this connection only
            code = 1
        if timer is not None:
            timer.cancel()
        del self.tasks[number]
        self.outbox.end(f"E {number} {code}")  # the report, then the token
        self.done_if_left()

    def done_if_left(self) -> None:
        if self.leaving and not self.tasks and not self.done.done():
            self.outbox.flush()
            self.done.set_result(0)

    def expire(self, number: int, peer: Any) -> None:
        """--max-lifetime: cancel the connection's handler (its end line says
        SIGTERM, as a fork-mode child's would)."""
        task = self.tasks.get(number)
        if task is None:
            return
        self.expired.add(number)
        after = f"{self.worker.policy.max_lifetime:g}s"
        peer_text = format_address(peer)
        self.worker.log.info(
            "max-lifetime",
            pid=self.worker.pid,
            conn=number,
            peer=peer_text,
            after=after,
            signal="SIGTERM",
        )
        task.cancel()

    # -- the loop's health ----------------------------------------------------------

    def tick(self) -> None:
        now = self.loop.time()
        late = now - self.due
        if late >= BLOCKED:
            self.worker.report("B", f"{late + TICK:.3f}")
        self.due = now + TICK
        self.loop.call_at(self.due, self.tick)

    # -- stopping -----------------------------------------------------------------

    def leave(self) -> None:
        """Stop accepting; exit once every connection has ended."""
        if self.leaving:
            return
        self.leaving = True
        self.watch("")
        self.loop.remove_reader(self.worker.alive_fd)
        self.done_if_left()

    def die(self) -> None:
        """End now: cancel every handler, give them CANCEL_WAIT, then die by SIGTERM."""
        if self.dying:
            return
        self.dying = True
        self.leave()
        for task in self.tasks.values():
            task.cancel()
        self.loop.create_task(self.end_now())

    async def end_now(self) -> None:
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=CANCEL_WAIT)
        self.outbox.flush()  # the ends already known are told as they were
        self.loop.remove_signal_handler(signal.SIGTERM)  # back to SIG_DFL
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        os.kill(os.getpid(), signal.SIGTERM)
