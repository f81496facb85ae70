"""The command line: ``forkserve serve``, ``forkserve client``, ``forkserve bench``.

Exit codes: 0 success; 100 usage or configuration error; 111 system or temporary
error (address in use, connection refused). No user error prints a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from forkserve import __version__
from forkserve._address import parse_listen_address
from forkserve._errors import EXIT_USAGE, AddressError, ForkserveError, UsageError
from forkserve._log import DEBUG, INFO, QUIET

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from typing import NoReturn

    from forkserve._exec import Program
    from forkserve._handler import Handler

SERVE_USAGE = "forkserve serve [HOST:]PORT [options] [-- PROGRAM [ARGS...]]"


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
    add_service_arguments(parser)
    add_verbosity(parser)


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """What each connection runs: a handler, a built-in, or (after ``--``) a program."""
    group = parser.add_argument_group(
        "what runs for each connection",
        "Echo by default. After '--', PROGRAM [ARGS...] is executed (never through a "
        "shell) with the connection on fd 0 and 1 and the UCSPI environment "
        "(PROTO, TCPREMOTEIP, ...).",
    )
    group.add_argument(
        "--handler",
        metavar="NAME",
        help="a Python handler, imported once before serving: pkg.module:function, "
        "path/to/file.py:function, or a built-in: echo, discard, daytime, chargen",
    )
    group.add_argument(
        "--banner",
        metavar="TEXT",
        type=banner_bytes,
        default=b"",
        help="send TEXT to each client before the handler or program starts; "
        "escapes \\n \\r \\t \\0 \\\\ \\xHH are decoded and no newline is added",
    )
    group.add_argument(
        "--reverse-lookup",
        action="store_true",
        help="exec mode: set TCPREMOTEHOST and TCPLOCALHOST by reverse lookups "
        "(tcpserver's -h; off by default)",
    )
    group.add_argument(
        "--local-host",
        metavar="NAME",
        help="exec mode: set TCPLOCALHOST to NAME without a lookup (tcpserver's -l)",
    )


def banner_bytes(text: str) -> bytes:
    from forkserve._config import parse_banner

    try:
        return parse_banner(text)
    except ForkserveError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", action="store_true", help="log only warnings and life-cycle events"
    )
    group.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")


def run_serve(args: argparse.Namespace) -> int:
    from forkserve._log import Log
    from forkserve._server import Server

    log = Log(QUIET if args.quiet else DEBUG if args.verbose else INFO)
    with Server(
        args.address,
        choose_service(args),
        max_conns=args.max_conns,
        backlog=args.backlog,
        grace=args.grace,
        banner=args.banner,
        log=log,
    ) as server:
        server.serve_forever(ready=announce_port if args.print_port else None)
    return 0


def choose_service(args: argparse.Namespace) -> Handler | Program | str:
    """The handler, handler name or Program the options ask for.

    Raises:
        UsageError: options that contradict each other.
    """
    from forkserve._exec import Program

    if args.program:
        if args.handler is not None:
            raise UsageError("--handler and '-- PROGRAM' cannot be used together")
        return Program(args.program, lookup_hosts=args.reverse_lookup, local_host=args.local_host)
    for flag, value in (
        ("--reverse-lookup", args.reverse_lookup),
        ("--local-host", args.local_host),
    ):
        if value:
            raise UsageError(f"{flag} sets UCSPI variables: it needs '-- PROGRAM'")
    if args.handler is not None:
        return str(args.handler)
    from forkserve._handler import echo

    return echo


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
    from forkserve import _client

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
    ]
    for name, summary, add_arguments, run in subcommands:
        usage = SERVE_USAGE if name == "serve" else None
        sub = commands.add_parser(name, help=summary, description=summary, usage=usage)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def split_program(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split at the first ``--``: forkserve's arguments, then PROGRAM [ARGS...].

    Everything after ``--`` belongs to the program, options included, so argparse
    never sees it.
    """
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    own, program = split_program(argv)
    parser = build_parser()
    args = parser.parse_args(own)
    if len(own) < len(argv):  # there was a '--'
        if args.command != "serve":
            parser.error(f"'--' introduces a PROGRAM for 'serve'; {args.command} takes none")
        if not program:
            parser.error("'--' must be followed by a PROGRAM to run")
    args.program = program
    try:
        code: int = args.run(args)
    except ForkserveError as exc:
        if getattr(args, "verbose", False) and exc.__cause__ is not None:
            import traceback

            traceback.print_exception(exc.__cause__, file=sys.stderr)
        print(f"forkserve {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code
