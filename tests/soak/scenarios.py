"""The reliability scenarios: each runs the real server under load and faults.

Every scenario takes a process model and a ``Size`` (``FAST`` for ``make test``,
``FULL`` for ``make soak``) and returns a ``Result``: what load it held, which faults it
injected, the bytes sent and verified (SHA-256 per connection), the zombies and
descriptors left behind, and whether every promise held. A scenario never raises for a
broken promise: it reports it, so the soak table shows every failure at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pwd
import random
import resource
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.soak.traffic import Tally, churn, reset_connection, run_integrity
from tests.support import (
    UNREAD_PIPE_SIZE,
    ServerProcess,
    connect,
    echo_roundtrip,
    mode_args,
    proc_stat,
    wait_until,
)

CHAOS = str(Path(__file__).parents[1] / "data" / "chaos_handler.py") + ":handle"
ASYNC_CHAOS = str(Path(__file__).parents[1] / "data" / "async_chaos_handler.py") + ":handle"
# The scenarios async mode runs too. Its chaos injects what ends one connection
# (a handler's exception, a client's reset): a SIGKILL or a segfault ends a whole
# worker with all its connections, by design (tests/integration/test_async.py).
ASYNC_SCENARIOS = ("churn", "integrity", "chaos", "stop")


@dataclass(frozen=True)
class Size:
    churn: int
    integrity: int
    max_payload: int
    concurrency: int
    chaos_seconds: float
    in_flight: int
    slow: int
    flood: int
    full_log: int


FAST = Size(
    churn=1000,
    integrity=60,
    max_payload=512 * 1024,
    concurrency=30,
    chaos_seconds=3,
    in_flight=40,
    slow=200,
    flood=64,
    full_log=300,
)
FULL = Size(
    churn=100_000,
    integrity=1000,
    max_payload=8 * 1024 * 1024,
    concurrency=1000,
    chaos_seconds=60,
    in_flight=500,
    slow=2000,
    flood=500,
    full_log=20_000,
)


@dataclass
class Result:
    scenario: str
    mode: str
    load: str
    faults: str = "-"
    sent: int = 0
    verified: int = 0
    zombies: int = 0
    fds_leaked: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def check(self, condition: bool, problem: str) -> None:
        if not condition:
            self.problems.append(problem)

    def count(self, tally: Tally) -> None:
        self.sent += tally.sent
        self.verified += tally.verified
        self.check(not tally.failures, f"{len(tally.failures)} failed: {tally.failures[:3]}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def lowest_free_fd(pid: int) -> int:
    """RLIMIT_NOFILE bounds descriptor numbers, not their count: with this as the soft
    limit, the process's next new descriptor fails with EMFILE."""
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(used) + 1) if n not in used)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def no_core_files() -> None:
    """preexec: a SIGSEGV in a chaos child must not leave a core file behind."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@contextlib.contextmanager
def server(result: Result, *args: str, **kwargs: object) -> Iterator[ServerProcess]:
    """A server in ``result.mode``; afterwards, what it left behind goes into ``result``."""
    kwargs.setdefault("preexec_fn", no_core_files)
    proc = ServerProcess([*mode_args(result.mode), *args], **kwargs)  # type: ignore[arg-type]
    try:
        yield proc
    finally:
        zombies = proc.lasting_zombies(timeout=15)
        result.zombies = max(result.zombies, len(zombies))
        result.check(not zombies, f"{len(zombies)} zombies left: {describe(proc, zombies)}")
        left = proc.close()
        result.check(not left, f"processes left behind: {left}")


def describe(proc: ServerProcess, pids: list[int]) -> str:
    """What /proc says of ``pids`` and of the server (read first: a zombie may be
    reaped meanwhile), what the log says of them, what the parent is doing."""
    notes = [f"{pid}: {proc_facts(pid)}" for pid in [*pids, proc.pid]]
    for pid in pids:
        lines = [line for line in proc.lines if f"pid={pid} " in line or f"pid={pid}\n" in line]
        notes.append(f"{pid}: {lines[-3:]}")
    with contextlib.suppress(OSError):
        notes.append("parent in " + Path(f"/proc/{proc.pid}/wchan").read_text())
    return "; ".join(notes)


PROC_FIELDS = ("Name", "State", "Tgid", "PPid", "Threads", "SigPnd", "ShdPnd", "SigBlk", "SigCgt")


def proc_facts(pid: int) -> str:
    """A process's state, parent, start time (clock ticks after boot) and signal masks."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "gone"
    fields = stat[stat.rindex(")") + 2 :].split()
    kept = [line.replace("\t", "") for line in status if line.split(":")[0] in PROC_FIELDS]
    return f"start={fields[19]} pgrp={fields[2]} {' '.join(kept)} cmdline={cmdline[:80]!r}"


def settled(proc: ServerProcess, mode: str) -> bool:
    """No connection in service: fork mode has no children, prefork none busy."""
    if mode == "fork":
        return not proc.children()
    accepts = len(proc.events("accept"))
    return accepts == len(proc.events("end"))


# -- churn ----------------------------------------------------------------------------


def scenario_churn(mode: str, size: Size) -> Result:
    """Many short connections; then no zombie, and the parent's descriptors and memory
    back at their idle level."""
    result = Result("churn", mode, f"{size.churn:,} short connections, 8 clients")
    with server(result, "-q", "--backlog", "4096") as proc:
        result.count(churn(proc.port, 200))  # warm up: lazy imports, allocator pools
        wait_until(lambda: settled_quiet(proc, mode), what="warm-up connections to end")
        fds, rss = fd_count(proc.pid), rss_kib(proc.pid)
        result.count(churn(proc.port, size.churn))
        wait_until(lambda: settled_quiet(proc, mode), timeout=60, what="connections to end")
        result.fds_leaked = fd_count(proc.pid) - fds
        grown = rss_kib(proc.pid) - rss
        result.check(result.fds_leaked == 0, f"{result.fds_leaked} descriptors leaked")
        # Python keeps freed memory in its pools: allow one MiB, not growth per connection.
        result.check(grown < 1024, f"parent memory grew {grown} KiB")
    return result


def settled_quiet(proc: ServerProcess, mode: str) -> bool:
    """With -q there are no accept/end lines: read the process table instead."""
    kids = proc.children()
    if mode == "fork":
        return not kids
    return all(Path(f"/proc/{pid}/wchan").read_text() == "do_epoll_wait" for pid in kids)


# -- integrity -----------------------------------------------------------------------


def scenario_integrity(mode: str, size: Size) -> Result:
    """Many concurrent connections, random sizes and half-closes, SHA-256 compared."""
    result = Result(
        "integrity",
        mode,
        f"{size.integrity:,} connections, {size.concurrency} at once, "
        f"payloads up to {size.max_payload >> 20 or size.max_payload >> 10}"
        f"{' MiB' if size.max_payload >> 20 else ' KiB'}, random half-close",
    )
    limit = ["--max-workers", str(size.concurrency)] if mode == "prefork" else []
    with server(result, "-q", "--backlog", "4096", *limit) as proc:
        tally = run_integrity(
            proc.port,
            connections=size.integrity,
            max_size=size.max_payload,
            concurrency=size.concurrency,
            seed=9,
            timeout=300,
        )
        result.count(tally)
        result.check(tally.ok == size.integrity, f"{tally.ok}/{size.integrity} verified")
    return result


# -- chaos ---------------------------------------------------------------------------


def scenario_chaos(mode: str, size: Size) -> Result:
    """Under load, kill children (SIGKILL, SIGSEGV), make handlers raise and run out of
    memory, reset clients: each is logged with its status, the server keeps serving, and
    the other connections lose nothing."""
    result = Result("chaos", mode, f"integrity load for {size.chaos_seconds:g} s")
    limit = ["--max-workers", "64"] if mode == "prefork" else []
    handler = ASYNC_CHAOS if mode == "async" else CHAOS
    with server(result, "--handler", handler, *limit) as proc:
        stop = threading.Event()
        totals = Tally()

        def load() -> None:
            seed = 0
            while not stop.is_set():
                seed += 1
                totals.add(
                    run_integrity(
                        proc.port,
                        connections=20,
                        max_size=size.max_payload // 4,
                        concurrency=10,
                        seed=seed,
                        timeout=60,
                        command=b"E",
                    )
                )

        loader = threading.Thread(target=load)
        loader.start()
        injected = inject_faults(proc, size.chaos_seconds, per_connection=mode == "async")
        stop.set()
        loader.join(300)
        result.count(totals)
        result.faults = ", ".join(f"{n} {kind}" for kind, n in injected.items())
        check_chaos_log(proc, injected, result)
        result.check(echo_roundtrip(proc.port, b"Estill") == b"still", "not serving after")
    return result


def inject_faults(
    proc: ServerProcess, seconds: float, *, per_connection: bool = False
) -> dict[str, int]:
    """Open chaos connections in a random order for ``seconds``; count each kind
    (``per_connection``: only the faults that end one connection, not a process)."""
    rng = random.Random(42)
    injected = {"SIGKILL": 0, "SIGSEGV": 0, "raise": 0, "MemoryError": 0, "reset": 0}
    kinds = ["raise", "reset"] if per_connection else list(injected)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        kind = rng.choice(kinds)
        if kind == "SIGKILL":
            kill_a_held_child(proc)
        elif kind == "reset":
            reset_connection(proc.port)
        else:
            command = {"SIGSEGV": b"S", "raise": b"R", "MemoryError": b"M"}[kind]
            with connect(proc.port) as sock:
                sock.sendall(command)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
        injected[kind] += 1
    return injected


def kill_a_held_child(proc: ServerProcess) -> None:
    """Hold a connection, find the process serving it from its accept line, SIGKILL it."""
    with socket.socket() as sock:
        # Over a long run a client port comes round again: bind first, count the accept
        # lines this address already has, then wait for one more and take the newest.
        sock.settimeout(15)
        sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()[:2]
        before = len(proc.events("accept", peer=f"{host}:{port}"))
        sock.connect(("127.0.0.1", proc.port))
        sock.sendall(b"Hx")
        assert sock.recv(1) == b"x"
        accept = proc.wait_event("accept", count=before + 1, peer=f"{host}:{port}")[-1]
        os.kill(int(accept["pid"]), signal.SIGKILL)
        with contextlib.suppress(ConnectionResetError):
            sock.recv(1)


def check_chaos_log(proc: ServerProcess, injected: dict[str, int], result: Result) -> None:
    expected = {"SIGKILL": "SIGKILL(9)", "SIGSEGV": "SIGSEGV(11)"}
    for kind, status in expected.items():
        # The client sees EOF when a child dies; its end line follows once it is reaped.
        with contextlib.suppress(AssertionError):  # counted below, whatever arrived
            proc.wait_event("end", count=injected[kind], signal=status)
        logged = len(proc.events("end", signal=status))
        if logged != injected[kind]:
            statuses = collections.Counter(
                e.get("signal") or "exit=" + e.get("exit", "?") for e in proc.events("end")
            )
            result.problems.append(
                f"{kind}: {injected[kind]} injected, {logged} logged; all ends: {dict(statuses)}"
            )
    raised = injected["raise"] + injected["MemoryError"]
    with contextlib.suppress(AssertionError):
        proc.wait_event("end", count=raised, exit="1")
    tracebacks = proc.log_text().count("Traceback (most recent call last)")
    result.check(tracebacks == raised, f"{raised} handler errors, {tracebacks} tracebacks")
    failed = len(proc.events("end", exit="1"))
    result.check(failed == raised, f"{raised} handler errors, {failed} ends with exit=1")


# -- resource exhaustion ----------------------------------------------------------------


def scenario_emfile(mode: str, size: Size) -> Result:
    """Out of descriptors: logged once, paused (not spinning), served when fds return."""
    result = Result("exhaustion: EMFILE", mode, "10 clients while out of descriptors")
    # Prefork: one worker, so no fresh worker (with descriptors to spare) takes over.
    pool = ["--min-spare", "1", "--max-spare", "1", "--max-workers", "1"]
    with server(result, *(pool if mode == "prefork" else [])) as proc:
        if mode == "prefork":  # the worker, set up and waiting for connections
            wait_until(lambda: settled_quiet(proc, mode) and proc.children(), what="the worker")
        accepting = [proc.pid] if mode == "fork" else proc.children()
        limits = {pid: resource.prlimit(pid, resource.RLIMIT_NOFILE) for pid in accepting}
        for pid, (_, hard) in limits.items():
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free_fd(pid), hard))
        result.faults = "RLIMIT_NOFILE at the lowest free descriptor"

        def restore() -> None:
            for pid, limit in limits.items():
                with contextlib.suppress(ProcessLookupError):
                    resource.prlimit(pid, resource.RLIMIT_NOFILE, limit)

        result.count(_clients_during(proc, "accept-paused", restore))
        result.check(bool(proc.events("accept-resumed")), "no accept-resumed logged")
        per_pid = [e.get("pid", "") for e in proc.events("accept-paused")]
        result.check(len(per_pid) == len(set(per_pid)), "accept-paused logged more than once")
    return result


def _clients_during(proc: ServerProcess, fault_event: str, restore: Callable[[], None]) -> Tally:
    """Start 10 echo clients, wait for ``fault_event`` in the log, then ``restore``."""
    results: list[Tally] = []

    def clients() -> None:
        results.append(
            run_integrity(
                proc.port, connections=10, max_size=4096, concurrency=10, seed=5, timeout=60
            )
        )

    runner = threading.Thread(target=clients)
    runner.start()
    try:
        proc.wait_event(fault_event)
    finally:
        restore()
        runner.join(120)
    return results[0] if results else Tally(failures=["clients did not finish"])


def scenario_nproc(mode: str, size: Size) -> Result:
    """fork(2) fails (RLIMIT_NPROC, as an unprivileged user): logged, backed off, and
    serving again once processes are allowed.

    Root ignores RLIMIT_NPROC, so the server binds as root and drops to nobody
    (--user). It starts with the limit set to exactly what nobody will run: the
    server, its initial workers and three placeholder processes; killing the
    placeholders is the resource coming back.
    """
    result = Result("exhaustion: fork fails", mode, "10 clients while fork fails")
    nobody = pwd.getpwnam("nobody")
    others = sum(1 for entry in Path("/proc").iterdir() if _uid(entry) == nobody.pw_uid)
    placeholders = 16  # more than the clients served at once after they are gone
    limit = others + 1 + (2 if mode == "prefork" else 0) + placeholders

    def limited() -> None:
        no_core_files()
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))

    with server(result, "--user", "nobody", preexec_fn=limited) as proc:
        if mode == "prefork":
            wait_until(
                lambda: settled_quiet(proc, mode) and len(proc.children()) >= 2,
                what="the spare workers",
            )
        holders = [_as_nobody_sleeping(nobody) for _ in range(placeholders)]
        result.faults = f"RLIMIT_NPROC {limit}: {placeholders} placeholders take the last slots"

        def restore() -> None:
            for holder in holders:
                holder.kill()
                holder.wait(10)

        during = _clients_during(proc, "fork-failed", restore)
        # A connection whose fork failed is closed (documented): it must get nothing,
        # not part of an echo; and once processes return, everyone is served again.
        unclean = [f for f in during.failures if " 0 of " not in f]
        result.check(not unclean, f"not closed cleanly while fork failed: {unclean[:3]}")
        result.faults += f"; {len(during.failures)} clients closed while fork failed"
        # The resource is back once a connection is served again: then everyone is.
        wait_until(lambda: _served(proc.port), timeout=15, what="serving again")
        after = run_integrity(
            proc.port, connections=10, max_size=4096, concurrency=10, seed=6, timeout=60
        )
        result.count(after)
        result.sent += during.sent
        result.verified += during.verified
    return result


def _served(port: int) -> bool:
    try:
        return echo_roundtrip(port, b"back?") == b"back?"
    except OSError:
        return False


def _as_nobody_sleeping(user: pwd.struct_passwd) -> subprocess.Popen[bytes]:
    def drop() -> None:
        os.setgid(user.pw_gid)
        os.setgroups([])
        os.setuid(user.pw_uid)

    return subprocess.Popen(["sleep", "120"], preexec_fn=drop)  # noqa: PLW1509


def scenario_memory(mode: str, size: Size) -> Result:
    """A child runs out of memory (RLIMIT_AS): MemoryError logged, exit 1, others fine."""
    result = Result("exhaustion: memory", mode, "5 children over RLIMIT_AS")
    with server(result, "--handler", CHAOS) as proc:
        for _ in range(5):
            with connect(proc.port) as sock:
                sock.sendall(b"M")
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
        proc.wait_event("end", count=5, exit="1")
        result.faults = "5 x MemoryError"
        result.check(proc.log_text().count("MemoryError") >= 5, "MemoryError not logged")
        result.check(echo_roundtrip(proc.port, b"Eok") == b"ok", "not serving after")
    return result


def _uid(proc_dir: Path) -> int:
    try:
        for line in (proc_dir / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


# -- stop under load -------------------------------------------------------------------


def scenario_stop(mode: str, size: Size) -> Result:
    """SIGTERM with connections in flight: every echo completes within --grace, exit 0,
    nothing left behind. Then SIGQUIT: ends at once, nothing left behind."""
    n = size.in_flight
    result = Result("stop under load", mode, f"{n} connections in flight")
    limit = ["--max-workers", str(n + 4)] if mode == "prefork" else []
    with server(result, "-q", "--grace", "30", *limit) as proc:
        tally, code, took = asyncio.run(_stop_in_flight(proc, n))
        result.count(tally)
        result.check(tally.ok == n, f"{tally.ok}/{n} in-flight echoes completed")
        result.check(code == 0, f"SIGTERM: exit {code}")
        result.faults = f"SIGTERM mid-stream (stopped in {took:.1f} s)"
    with server(result, "-q", "--grace", "60", *limit) as proc:
        held = [connect(proc.port) for _ in range(10)]
        for sock in held:
            sock.sendall(b"x")
            sock.recv(1)
        began = time.monotonic()
        code = proc.stop(signal.SIGQUIT, timeout=15)
        result.check(code == 0, f"SIGQUIT: exit {code}")
        result.check(time.monotonic() - began < 5, "SIGQUIT took more than 5 s")
        result.faults += f"; SIGQUIT with 10 held ({time.monotonic() - began:.1f} s)"
        for sock in held:
            sock.close()
    return result


async def _stop_in_flight(proc: ServerProcess, n: int) -> tuple[Tally, int, float]:
    """Open ``n`` echoes that each send half, then SIGTERM, then the other half."""
    half = 64 * 1024
    started = asyncio.Event()
    in_flight = 0

    async def one(index: int) -> Tally:
        nonlocal in_flight
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        payload = os.urandom(2 * half)
        tally = Tally(connections=1)
        writer.write(payload[:half])
        await writer.drain()
        got = await reader.readexactly(half)
        in_flight += 1
        if in_flight == n:
            started.set()
        await started.wait()
        await asyncio.sleep(0.2)  # the stop signal lands while every echo is mid-stream
        writer.write(payload[half:])
        writer.write_eof()
        got += await reader.read()
        writer.close()
        tally.sent = len(payload)
        if got == payload:
            tally.ok, tally.verified = 1, len(payload)
        else:
            tally.failures.append(f"c{index}: {len(got)} of {len(payload)} bytes back")
        return tally

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.wait_for(started.wait(), 120)
    began = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    total = Tally()
    for done in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(done, Tally):
            total.add(done)
        else:
            total.connections += 1
            total.failures.append(repr(done))
    code = await asyncio.to_thread(proc.wait_exit, 60)
    return total, code, time.monotonic() - began


# -- stop under a connection flood ------------------------------------------------------


def scenario_stop_flood(mode: str, size: Size) -> Result:
    """SIGTERM while clients flood in: every client whose handshake completed before
    the stop is served, none is reset, and the later ones are refused.

    The first ``n`` clients connect while the server and its workers are frozen
    (SIGSTOP), so all are in the backlog when SIGTERM is handled; ``n`` more connect
    at once as soon as the stop has forked its first child. A stop that forked
    before closing the listener had the second wave queued, then reset.
    """
    n = size.flood
    result = Result("stop under a flood", mode, f"{n} clients queued, {n} more during the stop")
    with server(result, "--grace", "60") as proc:
        if mode == "prefork":
            wait_until(lambda: len(proc.children()) >= 2, what="the spare workers")
        first, second = asyncio.run(_flood_at_stop(proc, n))
        code = proc.wait_exit(60)
        result.sent = result.verified = first["served"] + second["served"]
        result.check(code == 0, f"SIGTERM: exit {code}")
        result.check(first["served"] == n, f"queued before the stop: {dict(first)}")
        result.check(second["reset"] == 0, f"reset during the stop: {dict(second)}")
        result.check(second["served"] + second["refused"] == n, f"during the stop: {dict(second)}")
        result.faults = (
            f"SIGTERM with {n} queued; during the stop {second['served']} served, "
            f"{second['refused']} refused, {second['reset']} reset"
        )
    return result


async def _flood_at_stop(
    proc: ServerProcess, n: int
) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """The two waves' outcomes: ``served``, ``refused``, ``reset`` or ``closed``.

    Prefork's workers stay frozen until the second wave has connected, so that
    none of them takes a client the stop would otherwise have left queued."""
    workers = proc.children()
    for pid in (*workers, proc.pid):
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: all(map(_stopped, (*workers, proc.pid))), what="SIGSTOP")
        queued = [await _flood_connect(proc.port) for _ in range(n)]
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGCONT)
        await asyncio.to_thread(proc.wait_event, "accept")
        later = await asyncio.gather(*(_flood_connect(proc.port) for _ in range(n)))
    finally:
        for pid in (*workers, proc.pid):
            os.kill(pid, signal.SIGCONT)
    first = await asyncio.gather(*map(_flood_echo, queued))
    second = await asyncio.gather(*map(_flood_echo, later))
    return collections.Counter(first), collections.Counter(second)


def _stopped(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is None or stat[0] == "T"


Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _flood_connect(port: int) -> Pair | str:
    """A connection, or how connecting failed: ``refused`` or ``reset``."""
    try:
        return await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"  # reset as connect() completed


async def _flood_echo(pair: Pair | str) -> str:
    """Echo one byte: ``served``, ``reset`` or ``closed`` (an end of file)."""
    if isinstance(pair, str):
        return pair
    reader, writer = pair
    try:
        writer.write(b"f")
        got = await asyncio.wait_for(reader.readexactly(1), 60)
    except ConnectionResetError:
        return "reset"
    except asyncio.IncompleteReadError:
        return "closed"
    finally:
        writer.close()
    return "served" if got == b"f" else "closed"


# -- slow clients -----------------------------------------------------------------------

SLOW_SOURCE = "127.0.0.2"
PER_IP = 50


def scenario_slow(mode: str, size: Size) -> Result:
    """Slow-loris connections from one address against --per-ip, --idle-timeout and
    --max-lifetime, while clients from another address are served in full."""
    n = size.slow
    result = Result("slow clients", mode, f"{n:,} slow-loris connections from {SLOW_SOURCE}")
    limits = ["--per-ip", str(PER_IP), "--idle-timeout", "1", "--max-lifetime", "3"]
    cap = ["--max-workers", str(PER_IP + 40)] if mode == "prefork" else ["--max-conns", "500"]
    with server(result, *limits, *cap) as proc:
        tally, opened = asyncio.run(_slow_with_load(proc.port, n, size))
        result.count(tally)
        result.check(tally.ok == 40, f"{tally.ok}/40 normal clients served")
        rejected = len(proc.events("reject", reason="per-ip"))
        cut = proc.events("max-lifetime") + proc.events("timeout", kind="idle")
        # --per-ip bounds connections at once, not over a run: a slow connection still
        # queued when the first ones are cut may be admitted (prefork's round trip per
        # refusal makes that likely). What must hold: none escaped both limits.
        result.check(
            rejected + len(cut) >= opened,
            f"{opened} slow connections, {rejected} rejected, {len(cut)} cut",
        )
        result.check(len(cut) >= PER_IP, f"only {len(cut)} slow connections cut")
        result.faults = f"{rejected} rejected per-ip, {len(cut)} cut by idle or lifetime"
    return result


async def _slow_with_load(port: int, n: int, size: Size) -> tuple[Tally, int]:
    """Open ``n`` trickling connections from SLOW_SOURCE, then serve normal clients."""
    loop = asyncio.get_running_loop()
    held: list[socket.socket] = []
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((SLOW_SOURCE, 0))
        with contextlib.suppress(OSError):
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 10)
            held.append(sock)

    async def trickle() -> None:
        deadline = time.monotonic() + 5  # longer than --max-lifetime
        while time.monotonic() < deadline:
            for sock in held:
                with contextlib.suppress(OSError):
                    sock.send(b".")
            await asyncio.sleep(0.3)  # one byte each: never idle, always slow

    trickler = asyncio.create_task(trickle())
    tally = await asyncio.wait_for(_normal_clients(port, size), 60)
    await trickler
    for sock in held:
        sock.close()
    return tally, len(held)


async def _normal_clients(port: int, size: Size) -> Tally:
    from tests.soak.traffic import integrity

    return await integrity(
        port, connections=40, max_size=size.max_payload // 8, concurrency=20, seed=77, timeout=30
    )


# -- a full log -------------------------------------------------------------------


def scenario_full_log(mode: str, size: Size) -> Result:
    """stderr is a one-page pipe nobody reads during the load (issue 12, finding 3):
    the parent must keep accepting, reaping and answering, leak nothing, and once
    the log is read again, every line is there whole or counted by log-dropped."""
    result = Result(
        "full log", mode, f"{size.full_log:,} short connections, 8 clients, log never read"
    )
    with server(result, "--backlog", "4096", unread_log=True) as proc:
        result.count(churn(proc.port, 8))  # warm up: what start-up opens, it has closed
        wait_until(lambda: settled_quiet(proc, mode), what="warm-up connections to end")
        fds = fd_count(proc.pid)
        result.count(churn(proc.port, size.full_log))
        result.check(proc.log_queued() > UNREAD_PIPE_SIZE - 200, "the log never filled")
        wait_until(lambda: settled_quiet(proc, mode), timeout=60, what="connections to end")
        result.fds_leaked = fd_count(proc.pid) - fds
        result.check(result.fds_leaked == 0, f"{result.fds_leaked} descriptors leaked")
        result.check(echo_roundtrip(proc.port, b"full") == b"full", "not serving, log full")
        proc.drain_log()

        def accounted() -> tuple[int, int]:
            """Connection lines (accept and end) written and dropped: each written
            whole or counted, none lost (the warm-up's, churn's and the check's)."""
            written = len(proc.events("accept")) + len(proc.events("end"))
            dropped = sum(int(fields["n"]) for fields in proc.events("log-dropped"))
            return written, dropped

        expected = 2 * (8 + size.full_log + 1)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: sum(accounted()) >= expected, timeout=15, what="log lines")
        written, dropped = accounted()
        result.check(written + dropped == expected, f"{written}+{dropped} lines of {expected}")
        result.check(dropped > 0, "no line was dropped: the log never stalled")
        result.faults = f"stderr a 4 KiB pipe unread: {dropped:,} lines dropped, reported"
    return result


SCENARIOS: dict[str, Callable[[str, Size], Result]] = {
    "churn": scenario_churn,
    "integrity": scenario_integrity,
    "chaos": scenario_chaos,
    "emfile": scenario_emfile,
    "nproc": scenario_nproc,
    "memory": scenario_memory,
    "stop": scenario_stop,
    "stop-flood": scenario_stop_flood,
    "slow": scenario_slow,
    "full-log": scenario_full_log,
}
