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
    from typing import Any, NoReturn

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
    from forkserve._server import DEFAULT_GRACE, DEFAULT_MAX_CONNS, MODES

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
        "--mode",
        choices=MODES,
        default="fork",
        help="fork: a fresh process per connection (default); prefork: a dynamic pool "
        "of reusable worker processes",
    )
    parser.add_argument(
        "--max-conns",
        type=positive_int,
        metavar="N",
        help="fork mode: connections served at once; more wait in the kernel backlog "
        f"(default {DEFAULT_MAX_CONNS})",
    )
    add_pool_arguments(parser)
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
    from forkserve._options import (
        add_access_arguments,
        add_privilege_arguments,
        add_time_arguments,
    )

    add_access_arguments(parser)
    add_time_arguments(parser)
    add_privilege_arguments(parser)
    add_edge_arguments(parser)
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


def add_edge_arguments(parser: argparse.ArgumentParser) -> None:
    """The PROXY protocol and TLS: what comes before the client's own bytes."""
    group = parser.add_argument_group(
        "PROXY protocol and TLS",
        "Both happen in the connection's process, never in the parent: PROXY header "
        "first, then the TLS handshake, both within --handshake-timeout.",
    )
    group.add_argument(
        "--proxy-protocol",
        choices=("v1", "v2", "any"),
        default="",
        help="every connection starts with a PROXY header (HAProxy's send-proxy or "
        "send-proxy-v2); its client address replaces the balancer's everywhere",
    )
    group.add_argument(
        "--proxy-from",
        action="append",
        default=[],
        metavar="CIDR",
        help="accept PROXY headers only from this address or network (repeatable); "
        "others are refused and logged",
    )
    group.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    group.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    group.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="require client certificates signed by these CAs",
    )


def edge_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "proxy_protocol": args.proxy_protocol,
        "proxy_from": tuple(args.proxy_from),
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
    }


def banner_bytes(text: str) -> bytes:
    from forkserve._config import parse_banner

    try:
        return parse_banner(text)
    except ForkserveError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    from forkserve._server import DEFAULT_MAX_SPARE, DEFAULT_MAX_WORKERS, DEFAULT_MIN_SPARE

    pool = parser.add_argument_group("prefork pool (with --mode prefork)")
    pool.add_argument(
        "--min-spare",
        type=positive_int,
        metavar="N",
        help=f"idle workers kept ready, at least (default {DEFAULT_MIN_SPARE})",
    )
    pool.add_argument(
        "--max-spare",
        type=positive_int,
        metavar="N",
        help=f"idle workers kept, at most; more retire (default {DEFAULT_MAX_SPARE})",
    )
    pool.add_argument(
        "--max-workers",
        type=positive_int,
        metavar="N",
        help="workers at most, which is also the cap on connections served at once "
        f"(default {DEFAULT_MAX_WORKERS})",
    )
    pool.add_argument(
        "--max-requests",
        type=positive_int,
        metavar="N",
        help="replace a worker after it has served N connections (default: never)",
    )


POOL_OPTIONS = ("min_spare", "max_spare", "max_workers", "max_requests")


def mode_options(args: argparse.Namespace) -> dict[str, int]:
    """The options of the chosen mode, checked against it.

    Raises:
        UsageError: an option of the other mode was given.
    """
    from forkserve._errors import UsageError
    from forkserve._server import (
        DEFAULT_MAX_CONNS,
        DEFAULT_MAX_SPARE,
        DEFAULT_MAX_WORKERS,
        DEFAULT_MIN_SPARE,
    )

    given = [name for name in POOL_OPTIONS if getattr(args, name) is not None]
    if args.mode == "fork":
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"{flag} needs --mode prefork")
        return {"max_conns": args.max_conns or DEFAULT_MAX_CONNS}
    if args.max_conns is not None:
        raise UsageError("--max-conns is fork mode's limit; in prefork mode use --max-workers")
    max_workers = args.max_workers or DEFAULT_MAX_WORKERS
    min_spare = args.min_spare or min(DEFAULT_MIN_SPARE, max_workers)
    max_spare = args.max_spare or min(max(DEFAULT_MAX_SPARE, min_spare), max_workers)
    return {
        "min_spare": min_spare,
        "max_spare": max_spare,
        "max_workers": max_workers,
        "max_requests": args.max_requests or 0,
    }


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", action="store_true", help="log only warnings and life-cycle events"
    )
    group.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")


def run_serve(args: argparse.Namespace) -> int:
    from forkserve._log import Log
    from forkserve._options import access_options
    from forkserve._server import Server

    log = Log(QUIET if args.quiet else DEBUG if args.verbose else INFO)
    options: dict[str, Any] = {
        **mode_options(args),
        **access_options(args),
        **edge_options(args),
    }
    with Server(
        args.address,
        choose_service(args),
        backlog=args.backlog,
        grace=args.grace,
        banner=args.banner,
        log=log,
        mode=args.mode,
        **options,
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
