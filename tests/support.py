"""Test helpers: the real forkserve CLI as a subprocess, log events, and /proc.

Integration tests never sleep to synchronise: they read the port from --print-port,
wait for log lines with deadlines, and give every socket a timeout.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

WAIT = 15.0  # the longest any single wait in a test may take

FORKSERVE = [sys.executable, "-m", "forkserve"]
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux)
UNREAD_PIPE_SIZE = 4096  # ServerProcess(unread_log=True): the log pipe holds one page


def parse_line(line: str) -> tuple[str, dict[str, str]] | None:
    """Split ``TS EVENT k=v k="json string"`` into ``(event, fields)``; None if not a log line.

    A JSON line (``--log-format json``) gives the same: its fields as text.
    """
    if line.startswith("{"):
        record = json.loads(line)
        record.pop("ts")
        return str(record.pop("event")), {k: str(v) for k, v in record.items()}
    parts = line.split(" ", 2)
    if len(parts) < 2 or not re.match(r"\d{4}-\d\d-\d\dT", parts[0]):
        return None
    fields: dict[str, str] = {}
    rest = parts[2] if len(parts) == 3 else ""
    while rest:
        key, _, rest = rest.partition("=")
        if rest.startswith('"'):
            value, end = json.JSONDecoder().raw_decode(rest)
            rest = rest[end:].lstrip(" ")
        else:
            value, _, rest = rest.partition(" ")
        fields[key] = str(value)
    return parts[1], fields


class ServerProcess:
    """``forkserve serve`` running as a subprocess in its own process group.

    Resource handling: ``close()`` stops it (SIGTERM, then SIGKILL to the group) and
    kills anything it left behind, so a failing test cannot leak processes.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        address: str = "127.0.0.1:0",
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        command: Sequence[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        pass_fds: Sequence[int] = (),
        print_port: bool = True,
        unread_log: bool = False,
    ) -> None:
        argv = command if command is not None else [*FORKSERVE, "serve", address, "--print-port"]
        self.argv = [*argv, *args]
        # unread_log: stderr is a one-page pipe (4 KiB) nobody reads until drain_log(),
        # a log reader that stopped reading (issue 12, finding 3).
        log_r, log_w = os.pipe() if unread_log else (-1, subprocess.PIPE)
        if unread_log:
            fcntl.fcntl(log_w, F_SETPIPE_SZ, UNREAD_PIPE_SIZE)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_w,
            env=env,
            cwd=cwd,
            process_group=0,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - only resource limits, no threads then
            pass_fds=pass_fds,
        )
        if unread_log:
            os.close(log_w)
        self.stderr = os.fdopen(log_r, "rb") if unread_log else self.proc.stderr
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        if not unread_log:
            self._reader.start()
        # What --print-port printed: the port, or a Unix socket's path (``self.port``
        # is then 0).
        self.printed = ""
        self.port = self._read_port() if print_port else 0
        self.descendants_seen: set[tuple[int, int]] = set()  # (pid, start time)

    def _read_stderr(self) -> None:
        assert self.stderr is not None
        for raw in self.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        data = b""
        deadline = time.monotonic() + WAIT
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                self.close()
                raise AssertionError(f"no port printed within {WAIT}s: {self.log_text()}")
            chunk = os.read(fd, 100)
            if not chunk:
                self.proc.wait(WAIT)
                raise AssertionError(
                    f"server exited {self.proc.returncode} before printing its port: "
                    f"{self.log_text()}"
                )
            data += chunk
        self.printed = data.decode().strip()
        return int(self.printed) if self.printed.isdigit() else 0

    # -- the log ------------------------------------------------------------------

    def drain_log(self) -> None:
        """With ``unread_log``: start reading the log, as a reader that comes back."""
        if not self._reader.is_alive() and not self._reader.ident:
            self._reader.start()

    def log_queued(self) -> int:
        """With ``unread_log``: bytes in the log pipe, unread."""
        assert self.stderr is not None
        count = array.array("i", [0])
        fcntl.ioctl(self.stderr.fileno(), termios.FIONREAD, count)
        return count[0]

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def events(self, name: str, **match: object) -> list[dict[str, str]]:
        """Every logged ``name`` event whose fields equal ``match``."""
        found = []
        with self._cond:
            lines = list(self.lines)
        for line in lines:
            parsed = parse_line(line)
            if parsed is None or parsed[0] != name:
                continue
            if all(parsed[1].get(k) == str(v) for k, v in match.items()):
                found.append(parsed[1])
        return found

    def wait_event(
        self, name: str, count: int = 1, timeout: float = WAIT, **match: object
    ) -> list[dict[str, str]]:
        """Wait until at least ``count`` matching events are logged; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.events(name, **match)
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] == "<eof>"):
                    raise AssertionError(
                        f"waited {timeout}s for {count} x {name} {match}; log:\n{self.log_text()}"
                    )
                self._cond.wait(left)

    # -- processes ------------------------------------------------------------------

    def children(self) -> list[int]:
        """Live (non-zombie) connection processes and workers of the server, from
        /proc: its children, the forker's children in place of the forker."""
        kids = [pid for pid, state in self.processes() if state != "Z"]
        self.remember(kids)
        return kids

    def zombies(self) -> list[int]:
        return [pid for pid, state in self.processes() if state == "Z"]

    def zombie_ids(self) -> list[tuple[int, int]]:
        """``(pid, start time)`` of each zombie: a pid alone may name two processes."""
        found = []
        for pid in self.zombies():
            start = start_time(pid)
            if start is not None:
                found.append((pid, start))
        return found

    def lasting_zombies(self, timeout: float = WAIT) -> list[int]:
        """Zombies left unreaped (see ``lasting_zombies``)."""
        return lasting_zombies(self.zombie_ids, timeout=timeout)

    def forkers(self) -> list[int]:
        """The server's forker processes (see forkserve.parent.forker), alive."""
        found = [pid for pid, state in children_of(self.pid) if is_forker(pid) and state != "Z"]
        self.remember(found)
        return found

    def processes(self) -> list[tuple[int, str]]:
        found = []
        for pid, state in children_of(self.pid):
            if is_forker(pid):
                self.remember([pid])
                found.extend(children_of(pid))
            else:
                found.append((pid, state))
        return found

    def send_signal(self, sig: int) -> None:
        self.children()
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = WAIT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        """Signal the server, wait for it to exit, return its exit code."""
        if self.proc.poll() is None:
            self.send_signal(sig)
        return self.wait_exit(timeout)

    def remember(self, pids: list[int]) -> None:
        """Descendants seen: each its pid and start time (see ``still_running``)."""
        for pid in pids:
            start = start_time(pid)
            if start is not None:
                self.descendants_seen.add((pid, start))

    def leftovers(self) -> list[int]:
        """Descendants seen during the test that are still alive (orphans)."""
        return still_running(self.descendants_seen)

    def close(self) -> list[int]:
        """Stop the server if it runs; kill and return what it left behind."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(WAIT)
        left = self.leftovers()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.drain_log()
        self._reader.join(WAIT)
        for stream in (self.proc.stdout, self.stderr):
            if stream is not None:
                stream.close()
        return left


def proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, ppid)`` of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def is_forker(pid: int) -> bool:
    """Whether ``pid`` is a forker (``python -m forkserve.forker``), not one of the
    processes it forked (they lead process groups of their own; it does not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    pgid = int(stat[stat.rindex(")") + 2 :].split()[2])
    return b"forkserve.forker" in cmdline and pgid != pid


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot), or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(text[text.rindex(")") + 2 :].split()[19])


# A reap takes milliseconds after the exit (SIGCHLD wakes the parent); a zombie this
# many seconds old, with its parent idle, was missed.
ZOMBIE_SETTLE = 5.0


def lasting_zombies(
    sample: Callable[[], Sequence[tuple[int, int]]],
    settle: float = ZOMBIE_SETTLE,
    timeout: float = WAIT,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[], None] = lambda: time.sleep(0.01),
) -> list[int]:
    """The zombies a parent leaves unreaped: each one ``sample`` (``(pid, start time)``
    of its zombie children) keeps showing for ``settle`` seconds; [] at the first look
    that shows none.

    One look cannot tell a zombie left behind from one whose reap is a moment away
    (the last connection's child, whose client saw EOF before its process exited): a
    second look after one that showed none caught exactly that (issue 14's stop).
    And a pid is not a process: pid_max is 32768 here and the suites fork thousands
    a second, so a zombie is its pid and its start time.
    """
    since: dict[tuple[int, int], float] = {}
    deadline = clock() + timeout
    while True:
        now = clock()
        seen = set(sample())
        if not seen:
            return []
        since = {zombie: since.get(zombie, now) for zombie in seen}
        left = sorted(pid for (pid, _), first in since.items() if now - first >= settle)
        if left or now >= deadline:
            return left
        pause()


def still_running(seen: Iterable[tuple[int, int]]) -> list[int]:
    """The pids of ``seen`` (``(pid, start time)``) whose process still runs.

    A pid that now names a process started at another time is not the one seen: the
    suites fork thousands a second and pid_max is 32768 here, so it may be another
    suite's process, never to be reported, let alone killed (``close``).
    """
    return sorted(pid for pid, start in seen if start_time(pid) == start and process_alive(pid))


def process_alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def children_of(parent: int) -> list[tuple[int, str]]:
    """``(pid, state)`` of every process whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[1] == parent:
                found.append((int(entry.name), stat[0]))
    return found


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
    """Poll ``predicate`` (for state only /proc shows) until truthy, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.01)


def connect(port: int, host: str = "127.0.0.1", timeout: float = WAIT) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_all(sock: socket.socket) -> bytes:
    """Read until EOF."""
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def echo_roundtrip(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``payload`` while reading the echo concurrently, half-close, read to EOF."""
    with connect(port, host) as sock:

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = recv_all(sock)
        sender.join(WAIT)
        return received


def run_cli(
    args: Sequence[str],
    input: bytes = b"",
    timeout: float = WAIT,
    cwd: str | os.PathLike[str] | None = None,
    *,
    env: dict[str, str] | None = None,
    command: Sequence[str] = FORKSERVE,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*command, *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env=env,
        pass_fds=pass_fds,
    )


@contextlib.contextmanager
def raw_listener(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    """A listening socket for tests that need a peer of their own."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        sock.listen(16)
        sock.settimeout(WAIT)
        yield sock


def find_promtool() -> str | None:
    """promtool from PATH, or the copy ``make test`` puts beside the venv's python."""
    beside = Path(sys.executable).parent / "promtool"
    return str(beside) if beside.exists() else shutil.which("promtool")


def mode_args(mode: str) -> list[str]:
    if mode == "async":
        return ["--mode", "async", "--workers", "2"]
    return ["--mode", "prefork"] if mode == "prefork" else []


def limit_args(mode: str, n: int) -> list[str]:
    """Serve at most ``n`` connections at once, in either mode."""
    if mode == "prefork":
        return ["--max-workers", str(n), "--min-spare", "1", "--max-spare", str(n)]
    return ["--max-conns", str(n)]  # fork mode's, and async mode's across its workers
