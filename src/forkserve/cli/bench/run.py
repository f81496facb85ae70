"""``forkserve bench HOST PORT --mode rate|pingpong|bulk|hold``: load that checks every byte.

Against any echo server (forkserve's default handler, ``socat ... PIPE``,
``tcpserver ... cat``), four workloads:

- rate: each of ``-c`` workers loops connect, send ``-s`` bytes, read the whole echo,
  half-close, expect EOF; connections/s and connect-to-echo latency.
- pingpong: ``-c`` persistent connections each send ``-s`` bytes and wait for the
  whole echo, again and again; messages/s and round-trip latency.
- bulk: ``-c`` connections each stream ``-n`` bytes while reading the echo; MB/s
  (10^6 bytes) of verified echo.
- hold: ``-c`` connections opened at once, an echo verified on each at the start
  and again after ``-d`` seconds.

Every echoed byte is compared with what was sent (``cli.bench.verify``); a wrong, missing or
extra byte, or a server that does not close after the client's EOF, is reported with
the connection and offset. Exit codes: 0 all verified; 1 wrong data (mismatch, short
echo, extra bytes, missing EOF, a connection to itself); 2 connections failed
(refused, reset, timed out) but every byte that came back was right; 100 usage;
111 the server cannot be reached at all. ``--json`` prints one object on stdout.

This module's top level imports only the standard library: ``forkserve serve`` imports
the CLI, and the server's parent stays small. rich is imported inside ``run``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from forkserve._errors import AddressError, TemporaryError, UsageError
from forkserve.core.address import check_host, parse_port

# The serving parent imports this module (for `forkserve bench`'s arguments): keep its
# top level free of typing and json, which cost every fork (tests/unit/test_lean_parent).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from forkserve.cli.bench.stats import Report, Tally
    from forkserve.cli.bench.work import Config

MODES = ("rate", "pingpong", "bulk", "hold")
DEFAULT_CONNS = {"rate": 8, "pingpong": 8, "bulk": 1, "hold": 1000}
DEFAULT_SIZE = {"rate": 16, "pingpong": 64, "bulk": 0, "hold": 64}
DEFAULT_DURATION = 10.0
DEFAULT_NBYTES = 1 << 30
DEFAULT_TIMEOUT = 5.0
# Each rate, pingpong or bulk worker is a process: more than this is a typo.
MAX_WORKERS = 1024
MAX_SIZE = 64 << 20
# Descriptors hold needs beyond one per connection (stdio, the event loop, imports).
FD_SPARE = 64
_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

# (operations, verified bytes, problems, seconds since the start)
ProgressFn = Callable[[int, int, int, float], None]


def byte_count(text: str) -> int:
    """``-s``/``-n`` values: a whole number of bytes, or with K, M, G (powers of 1024)."""
    number, suffix = text.strip(), ""
    if number and number[-1].lower() in _SUFFIXES:
        number, suffix = number[:-1], number[-1].lower()
    if not number.isascii() or not number.isdigit():
        raise argparse.ArgumentTypeError(f"expected bytes like 64, 64K, 1G, not {text!r}")
    value = int(number) * _SUFFIXES[suffix]
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 byte or more, not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from forkserve.cli.args import seconds
    from forkserve.cli.client import add_target_arguments

    add_target_arguments(parser)
    parser.add_argument(
        "-m", "--mode", choices=MODES, default="pingpong", help="the workload (default %(default)s)"
    )
    add_load_arguments(parser)
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="longest wait for a connect, an echo, or EOF (default %(default)g)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout, no table"
    )
    from forkserve.cli.client import add_edge_arguments

    add_edge_arguments(parser)
    parser.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr: auto shows it when stderr is a terminal",
    )


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """How much load: connections, duration, message and stream sizes."""
    from forkserve.cli.args import positive_int, seconds

    parser.add_argument(
        "-c",
        "--connections",
        type=positive_int,
        metavar="N",
        help="workers (rate) or connections (others); defaults: "
        + ", ".join(f"{m} {n}" for m, n in DEFAULT_CONNS.items()),
    )
    parser.add_argument(
        "-d",
        "--duration",
        type=seconds,
        default=DEFAULT_DURATION,
        metavar="SECONDS",
        help="how long rate and pingpong run, and how long hold holds (default %(default)g)",
    )
    parser.add_argument(
        "-s",
        "--size",
        type=byte_count,
        metavar="BYTES",
        help="message size for rate, pingpong and hold (defaults: rate 16, others 64)",
    )
    parser.add_argument(
        "-n",
        "--bytes",
        type=byte_count,
        default=DEFAULT_NBYTES,
        dest="nbytes",
        metavar="BYTES",
        help="bulk: bytes each connection streams both ways (default 1G)",
    )


def check_load(args: argparse.Namespace) -> tuple[int, int]:
    """The connections and message size for ``args.mode``, checked with the durations.

    Raises:
        UsageError: a value out of range for the mode.
    """
    mode = args.mode
    conns = args.connections or DEFAULT_CONNS[mode]
    if mode != "hold" and conns > MAX_WORKERS:
        raise UsageError(f"-c {conns}: {mode} runs a process per connection, at most {MAX_WORKERS}")
    size = args.size or DEFAULT_SIZE[mode]
    if size > MAX_SIZE:
        raise UsageError(f"-s {size}: messages are at most {MAX_SIZE} bytes")
    if mode in ("rate", "pingpong") and args.duration <= 0:
        raise UsageError(f"-d must be more than 0 seconds for {mode}")
    if args.timeout <= 0:
        raise UsageError("--timeout must be more than 0 seconds")
    return conns, size


def make_config(args: argparse.Namespace) -> Config:
    """Check the arguments and resolve the host.

    Raises:
        UsageError: out of range, or a host that does not resolve (AddressError).
    """
    import socket

    from forkserve.cli.bench.work import Config
    from forkserve.cli.client import client_context, unix_target

    mode = args.mode
    host = args.host[1:-1] if args.host.startswith("[") and args.host.endswith("]") else args.host
    unix = unix_target(args)
    conns, size = check_load(args)
    if unix is None:
        port, family, sockaddr = resolve(host, args.port)
    else:
        host, port, family, sockaddr = args.host.strip(), 0, socket.AF_UNIX, unix
    tls = client_context(args)
    if (args.proxy or tls is not None) and mode not in ("rate", "pingpong"):
        raise UsageError(f"--proxy and --tls work with rate and pingpong, not {mode}")
    return Config(
        mode=mode,
        host=host,
        port=port,
        family=family,
        sockaddr=sockaddr,
        conns=conns,
        duration=args.duration,
        size=size,
        nbytes=args.nbytes,
        timeout=args.timeout,
        proxy=args.proxy or "",
        tls=tls,
    )


def resolve(host: str, port_text: str) -> tuple[int, int, Any]:
    """``(port, family, sockaddr)`` of HOST PORT: the first address it resolves to.

    Raises:
        AddressError: a bad host or port, or one that does not resolve.
    """
    import socket

    check_host(host)
    port = parse_port(port_text)
    if port == 0:
        raise AddressError("port 0 is not a server's port")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AddressError(f"cannot resolve {host!r}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return port, family, sockaddr


def probe(config: Config) -> None:
    """One connection before the run, so that "nothing listens" is one clear error.

    Raises:
        TemporaryError: refused, timed out, unreachable, or connected to itself.
    """
    from forkserve.cli.bench.verify import VerifyError
    from forkserve.cli.bench.work import connect

    try:
        connect(config, "probe").close()
    except VerifyError as exc:
        problem = exc.problem
        raise TemporaryError(
            f"cannot connect to {config.target}: {problem.kind} {problem.detail}".rstrip()
        ) from None


def raise_fd_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to ``needed`` if it is lower.

    Raises:
        UsageError: the hard limit is lower than ``needed``.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UsageError(
            f"hold needs {needed} file descriptors but the hard limit is {hard} "
            "(ulimit -Hn): use a smaller -c or raise the limit"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def execute(
    config: Config,
    on_progress: ProgressFn | None = None,
    on_held: Callable[[Tally], None] | None = None,
) -> Report:
    """Run one workload to the end and summarise it. The benchmark suite calls this.

    Args:
        config: the run.
        on_progress: called with live counts, about ten times a second.
        on_held: hold only: called while every connection is held (after the first
            echoes), e.g. to measure the server's memory.
    """
    import time

    from forkserve.cli.bench.hold import hold
    from forkserve.cli.bench.stats import Report
    from forkserve.cli.bench.work import Counters
    from forkserve.cli.bench.workers import run_workers

    if config.mode == "hold":
        raise_fd_limit(config.conns + FD_SPARE)
        began = time.monotonic()

        class Live(Counters):
            def publish(self, tally: Tally) -> None:
                if on_progress is not None:
                    on_progress(
                        tally.ops + tally.verified_start,
                        tally.verified_bytes,
                        tally.error_count,
                        time.monotonic() - began,
                    )

        tally = hold(config, Live([], 0), on_held or (lambda _: None))
        elapsed = time.monotonic() - began
    else:
        tally, elapsed = run_workers(config, on_progress)
    return Report(
        mode=config.mode,
        target=config.target,
        connections=config.conns,
        message_size=config.size,
        bytes_per_connection=config.nbytes,
        duration=config.duration,
        elapsed=elapsed,
        tally=tally,
    )


def run(args: argparse.Namespace) -> int:
    config = make_config(args)
    probe(config)
    from forkserve.cli.bench import view

    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    with view.LiveProgress(config, enabled=show) as live:
        report = execute(config, live.update, live.held)
    if args.json:
        import json

        sys.stdout.write(json.dumps(report.to_json()) + "\n")
    else:
        view.print_report(report)
    if report.exit_code:
        _summarise_failure(report.to_json())
    return report.exit_code


def _summarise_failure(data: dict[str, Any]) -> None:
    """One line on stderr for a failed run: how many problems, and the first."""
    first = data["problems"][0] if data["problems"] else ""
    counts = ", ".join(f"{kind} {n}" for kind, n in data["errors"].items())
    print(
        f"forkserve bench: {data['error_count']} problems ({counts}); first: {first}",
        file=sys.stderr,
    )
    sys.stderr.flush()
