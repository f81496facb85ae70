"""``make bench``: forkserve beside its peers, four workloads each, one run, one report.

Starts each server in turn on 127.0.0.1 (port 0 where it can, so no port races),
waits until it is ready by reading its port or by connecting (never by sleeping),
runs ``forkserve bench``'s rate, pingpong, bulk and hold workloads against it through
the same code the CLI uses (``forkserve.cli.bench.run.execute``), measures the server's memory
while hold holds its connections, stops it, and goes on. At the end it writes
docs/benchmarks.md and PNG plots beside it.

Servers: forkserve in every mode ``forkserve._server.MODES`` lists, and its exec mode
running ``cat`` (the tcpserver replacement, beside ``tcpserver ... cat``); the peers
``socketserver.ForkingTCPServer`` (benchmarks/echo_stdlib.py), ``socat ... fork PIPE``
and ``tcpserver ... cat``; as a reference rather than a peer, the least a Python
fork-per-connection server can do (benchmarks/echo_floor.py, "the Python floor");
and, as the client's own ceiling, a one-process uvloop echo server
(benchmarks/echo_uvloop.py). Each row's purpose is in the report.

Usage: ``python benchmarks/run.py [--duration S] [--hold N] [--bulk BYTES] [--out DIR]``
(``make bench BENCH_ARGS='--hold 5000'``). Exit status 0 even when a server fails a
workload: failures are results, reported in the table; 1 if the suite itself broke.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import client_models  # noqa: E402
import report  # noqa: E402

from forkserve import __version__  # noqa: E402
from forkserve._server import MODES  # noqa: E402
from forkserve.cli.bench.run import byte_count, execute  # noqa: E402
from forkserve.cli.bench.stats import Report, Tally  # noqa: E402
from forkserve.cli.bench.work import Config  # noqa: E402

HOST = "127.0.0.1"
START_WAIT = 15.0
STOP_WAIT = 15.0
WORKLOADS = ("rate", "pingpong", "bulk", "hold")
# Each mode's own flag for "serve this many connections at once" (hold needs them all).
CAPACITY_FLAGS = {"fork": "--max-conns", "prefork": "--max-workers"}


@dataclass
class Server:
    """How to start one server and what it is: "forkserve", "peer", "reference" (a
    yardstick, not a competitor) or "ceiling"; ``purpose``: what its row is for."""

    name: str
    kind: str
    argv: list[str]
    port_from: str  # "stdout": prints its port; "connect": we chose it, poll by connecting
    port: int = 0
    purpose: str = ""


@dataclass
class Outcome:
    """One server's results: a Report per workload, plus hold's memory."""

    server: Server
    reports: dict[str, Report] = field(default_factory=dict)
    baseline_kib: int | None = None
    held_kib: int | None = None
    failure: str | None = None

    @property
    def kib_per_conn(self) -> float | None:
        hold = self.reports.get("hold")
        if hold is None or self.held_kib is None or self.baseline_kib is None:
            return None
        held = hold.tally.verified_start
        return (self.held_kib - self.baseline_kib) / held if held else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def servers(hold: int) -> list[Server]:
    """The line-up, forkserve first; every mode the installed forkserve offers."""
    python = sys.executable
    help_text = subprocess.run(
        [python, "-m", "forkserve", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    lineup = []
    for mode in MODES:
        argv = [python, "-m", "forkserve", "serve", f"{HOST}:0", "--print-port"]
        if len(MODES) > 1 or "--mode" in help_text:
            argv += ["--mode", mode]
        flag = CAPACITY_FLAGS.get(mode)
        if flag and flag in help_text:
            argv += [flag, str(hold + 64)]
        purpose = PURPOSES.get(mode, "")
        lineup.append(Server(f"forkserve {mode}", "forkserve", argv, "stdout", purpose=purpose))
    if "fork" in MODES:  # exec mode: a program per connection, as tcpserver runs one
        argv = [python, "-m", "forkserve", "serve", f"{HOST}:0", "--print-port"]
        argv += ["--max-conns", str(hold + 64), "--", "cat"]
        lineup.append(Server("forkserve exec cat", "forkserve", argv, "stdout", purpose=EXEC))
    socat_port = free_port()
    lineup += [
        Server(
            "Python floor",
            "reference",
            [python, str(HERE / "echo_floor.py")],
            "stdout",
            purpose=FLOOR,
        ),
        Server(
            "stdlib ForkingTCPServer",
            "peer",
            [python, str(HERE / "echo_stdlib.py")],
            "stdout",
            purpose=STDLIB,
        ),
        Server(
            "socat fork",
            "peer",
            ["socat", f"TCP-LISTEN:{socat_port},bind={HOST},fork,reuseaddr", "PIPE"],
            "connect",
            socat_port,
            purpose="the common C fork-per-connection relay: a peer",
        ),
        # -H -R -l0: no DNS or ident lookup per connection. djb's resolver ignores
        # /etc/hosts; without -H, some connections here waited 3 s for a reverse
        # lookup of 127.0.0.1 (measured: 11 connections/s instead of 2,100).
        Server(
            "tcpserver cat",
            "peer",
            ["tcpserver", "-1", "-HR", "-l0", "-c", "100000", HOST, "0", "cat"],
            "stdout",
            purpose="djb's C fork-and-exec server with cat: the peer forkserve exec mode replaces",
        ),
        Server(
            "uvloop echo (ceiling)",
            "ceiling",
            [python, str(HERE / "echo_uvloop.py")],
            "stdout",
            purpose="one process, no fork: what the client itself can reach, not a peer",
        ),
    ]
    return lineup


PURPOSES = {
    "fork": "Python handlers, a process forked per connection: against the Python floor, "
    "what forkserve's features cost a connection",
    "prefork": "Python handlers in a pool of reused workers: against the uvloop ceiling",
}
EXEC = (
    "exec mode, `-- cat`: a program per connection (posix_spawn when nothing runs before "
    "it), apples to apples with tcpserver cat"
)
FLOOR = (
    "the least a Python fork-per-connection server can do (selector, accept, fork, echo, "
    "os._exit; nothing else), on forkserve's interpreter: the floor fork mode is measured "
    "against, not a peer"
)
STDLIB = "socketserver.ForkingTCPServer as a Python developer would write it: a peer"


# -- processes and memory, from /proc -----------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, found by parent pid (forkserve's children
    live in process groups of their own, so the group would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def pss_kib(pids: list[int]) -> int:
    """Proportional set size summed over ``pids``, in KiB (smaps_rollup)."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        match = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
        if match:
            total += int(match.group(1))
    return total


def settled_tree(proc: subprocess.Popen[bytes]) -> list[int]:
    """The server's tree once it stops changing (children of the last workload exit)."""
    previous: list[int] = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        tree = sorted(process_tree(proc.pid))
        if tree == previous:
            break
        previous = tree
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.25)  # a bounded look again, not a synchronisation
    return previous


# -- one server ---------------------------------------------------------------------------


@contextlib.contextmanager
def running(server: Server, logdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``server``, wait until it accepts, and stop it (and its tree) afterwards."""
    slug = re.sub(r"\W+", "-", server.name)
    log = (logdir / f"{slug}.log").open("wb")
    proc = subprocess.Popen(
        server.argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        process_group=0,
        cwd=ROOT,
    )
    try:
        if server.port_from == "stdout":
            server.port = read_port(proc)
        else:
            wait_connectable(proc, server.port)
        yield proc
    finally:
        stop(proc)
        log.close()


def read_port(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(START_WAIT):
            raise RuntimeError(f"no port printed within {START_WAIT}s")
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        raise RuntimeError(f"expected a port on stdout, got {line!r}")
    return int(line)


def wait_connectable(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=START_WAIT).close()
        except ConnectionRefusedError:
            try:
                code = proc.wait(0.02)  # not listening yet: look again shortly
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"exited with status {code} before listening") from None
        return
    raise RuntimeError(f"not accepting connections within {START_WAIT}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's group, wait, then SIGKILL whatever of its tree is left."""
    tree = process_tree(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_WAIT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_WAIT)
    for pid in tree[1:]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def measure(server: Server, args: argparse.Namespace, logdir: Path) -> Outcome:
    outcome = Outcome(server)
    try:
        with running(server, logdir) as proc:
            for workload in WORKLOADS:
                config = make_config(server.port, workload, args)
                if workload == "hold":
                    outcome.baseline_kib = pss_kib(settled_tree(proc))

                    def held(_: Tally, proc: subprocess.Popen[bytes] = proc) -> None:
                        outcome.held_kib = pss_kib(process_tree(proc.pid))

                    result = execute(config, on_held=held)
                else:
                    result = execute(config)
                outcome.reports[workload] = result
                say(f"  {workload:8} {report.headline(result, outcome)}")
    except (RuntimeError, OSError) as exc:
        outcome.failure = f"{type(exc).__name__}: {exc}"
        say(f"  FAILED: {outcome.failure}")
    return outcome


def make_config(port: int, workload: str, args: argparse.Namespace) -> Config:
    return Config(
        mode=workload,
        host=HOST,
        port=port,
        family=socket.AF_INET,
        sockaddr=(HOST, port),
        conns={"rate": 8, "pingpong": 8, "bulk": 1, "hold": args.hold}[workload],
        duration=args.hold_seconds if workload == "hold" else args.duration,
        size={"rate": 16, "pingpong": 64, "bulk": 0, "hold": 64}[workload],
        nbytes=args.bulk,
        timeout=args.timeout,
    )


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the machine ----------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1) if found else cpu
    info = {
        "cpu": f"{len(os.sched_getaffinity(0))} cores usable ({os.cpu_count()} online), {cpu}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "forkserve": f"{__version__} ({git_describe()})",
    }
    socat = tool_version(["socat", "-V"], r"socat version (\S+)")
    tcpserver = package_version("/usr/bin/tcpserver")
    info["peers"] = f"socat {socat}, tcpserver from {tcpserver}"
    return info


def git_describe() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return done.stdout.strip() or "not a git checkout"


def tool_version(argv: list[str], pattern: str) -> str:
    if shutil.which(argv[0]) is None:
        return "missing"
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    found = re.search(pattern, done.stdout + done.stderr)
    return found.group(1) if found else "unknown"


def package_version(path: str) -> str:
    """The Debian package (ucspi-tcp or ucspi-tcp-ipv6) and version that owns ``path``."""
    if shutil.which("dpkg-query") is None:
        return "unknown"
    owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True, check=False)
    name = owner.stdout.partition(":")[0].strip()
    if not name:
        return "unknown"
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", name],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return f"{name} {done.stdout.strip()}"


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of rate and pingpong")
    parser.add_argument("--hold", type=int, default=1000, help="connections hold opens")
    parser.add_argument("--hold-seconds", type=float, default=2.0, help="how long hold holds")
    parser.add_argument(
        "--bulk", type=byte_count, default=1 << 30, help="bytes bulk streams (default 1G)"
    )
    # 10 s rather than bench's 5: servers with short listen queues (stdlib 5, socat 5,
    # tcpserver 20) get a hold's connections accepted only through SYN-ACK retries.
    parser.add_argument("--timeout", type=float, default=10.0, help="bench --timeout")
    parser.add_argument("--models-seconds", type=float, default=2.0, help="client model runs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the report goes")
    parser.add_argument("--only", action="append", help="run only servers whose name contains this")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    host = machine()  # first: the commit measured, before anyone edits the tree
    lineup = servers(args.hold)
    if args.only:
        lineup = [s for s in lineup if any(word in s.name for word in args.only)]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="forkserve-bench-") as tmp:
        logdir = Path(tmp)
        for server in lineup:
            say(f"{server.name}: {' '.join(server.argv)}")
            outcomes.append(measure(server, args, logdir))
        models = compare_models(args, logdir)
    args.out.mkdir(parents=True, exist_ok=True)
    report.write(
        args.out,
        outcomes,
        models,
        machine=host,
        command=" ".join(["benchmarks/run.py", *argv]),
        seconds=time.monotonic() - began,
    )
    say(f"wrote {args.out / 'benchmarks.md'} in {time.monotonic() - began:.0f}s")
    return 0


# Client models are compared against the server that drives each workload hardest
# here, so that the server limits them as little as possible.
MODEL_SERVERS = {"pingpong": "tcpserver cat", "rate": "uvloop echo (ceiling)"}


def compare_models(args: argparse.Namespace, logdir: Path) -> dict[str, dict[str, float]]:
    """``{workload: {model: operations/s}}`` for the client models."""
    results = {}
    for workload, name in MODEL_SERVERS.items():
        server = next(s for s in servers(args.hold) if s.name == name)
        say(f"client models, {workload}, against {name}")
        with running(server, logdir):
            results[workload] = client_models.compare(
                server.port, args.models_seconds, (workload,)
            )[workload]
    return results


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
