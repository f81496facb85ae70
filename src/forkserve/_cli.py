"""The command line: ``forkserve serve``, ``forkserve client``, ``forkserve bench``.

Exit codes: 0 success; 100 usage or configuration error; 111 system or temporary
error (address in use, connection refused). No user error prints a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from forkserve import __version__
from forkserve._address import parse_listen_address
from forkserve._errors import EXIT_USAGE, AddressError, ForkserveError
from forkserve._log import DEBUG, INFO, QUIET


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 100 (not 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, not {value}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, not {text!r}")
    return value


def listen_address(text: str) -> tuple[str, int]:
    try:
        return parse_listen_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from forkserve._listen import DEFAULT_BACKLOG
    from forkserve._server import DEFAULT_GRACE, DEFAULT_MAX_CONNS

    parser.add_argument(
        "address",
        metavar="[HOST:]PORT",
        type=listen_address,
        help="where to listen: 9000, 0.0.0.0:9000, [::]:9000 (dual stack), [::1]:0; "
        "the host defaults to 127.0.0.1 and port 0 picks a free port",
    )
    parser.add_argument(
        "--print-port",
        action="store_true",
        help="print the bound port alone on one line of stdout once listening",
    )
    parser.add_argument(
        "--max-conns",
        type=positive_int,
        default=DEFAULT_MAX_CONNS,
        metavar="N",
        help="connections served at once; more wait in the kernel backlog "
        f"(default {DEFAULT_MAX_CONNS})",
    )
    parser.add_argument(
        "--backlog",
        type=positive_int,
        default=DEFAULT_BACKLOG,
        metavar="N",
        help=f"listen queue length, capped by net.core.somaxconn (default {DEFAULT_BACKLOG})",
    )
    parser.add_argument(
        "--grace",
        type=seconds,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long connections may take to finish before their "
        f"processes are terminated (default {DEFAULT_GRACE:g})",
    )
    add_verbosity(parser)


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", action="store_true", help="log only warnings and life-cycle events"
    )
    group.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")


def run_serve(args: argparse.Namespace) -> int:
    from forkserve._handler import echo
    from forkserve._log import Log
    from forkserve._server import Server

    log = Log(QUIET if args.quiet else DEBUG if args.verbose else INFO)
    with Server(
        args.address,
        echo,
        max_conns=args.max_conns,
        backlog=args.backlog,
        grace=args.grace,
        log=log,
    ) as server:
        server.serve_forever(ready=announce_port if args.print_port else None)
    return 0


def announce_port(server: object) -> None:
    """``--print-port``: the port alone on one line, flushed, once listening."""
    from forkserve._server import Server

    assert isinstance(server, Server)
    try:
        sys.stdout.write(f"{server.port}\n")
        sys.stdout.flush()
    except BrokenPipeError:
        server.log.warning("print-port-failed", error="EPIPE")


def build_parser() -> Parser:
    from forkserve import _bench, _client

    parser = Parser(
        prog="forkserve",
        description="A multi-process TCP server: one process per connection, done right.",
    )
    parser.add_argument("--version", action="version", version=f"forkserve {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subcommands: list[
        tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]
    ] = [
        ("serve", "serve connections (echo by default)", add_serve_arguments, run_serve),
        (
            "client",
            "connect, send stdin, print what comes back",
            _client.add_arguments,
            _client.run,
        ),
        (
            "bench",
            "load an echo server and verify every byte",
            _bench.add_arguments,
            _bench.run,
        ),
    ]
    for name, summary, add_arguments, run in subcommands:
        sub = commands.add_parser(name, help=summary, description=summary)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ForkserveError as exc:
        print(f"forkserve {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code
