"""The command line: ``forkserve serve``, ``forkserve client``, ``forkserve bench``.

Exit codes: 0 success; 100 usage or configuration error; 111 system or temporary
error (address in use, connection refused). No user error prints a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from forkserve import __version__
from forkserve._errors import EXIT_USAGE, ForkserveError, UsageError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from typing import NoReturn


SERVE_USAGE = "forkserve serve [HOST:]PORT|unix:PATH [options] [-- PROGRAM [ARGS...]]"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 100 (not 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def run_serve(args: argparse.Namespace) -> int:
    """``forkserve serve``: resolve the settings (see config.options), then serve."""
    import os

    from forkserve._server import Server
    from forkserve.config.options import (
        Configuration,
        Reloader,
        choose_service,
        server_settings,
    )

    internal = ("command", "run", "program", "config")
    given = {key: value for key, value in vars(args).items() if key not in internal}
    if given.get("listen") is None:
        given.pop("listen", None)  # the config file's, if any
    if args.program:
        given["program"] = args.program
    configuration = Configuration(given, getattr(args, "config", None))
    values = configuration.resolve()
    address = values["listen"]
    assert address is None or isinstance(address, tuple | str)
    if address is None and "LISTEN_FDS" not in os.environ:
        raise UsageError("the [HOST:]PORT to listen on is missing (see --help)")
    settings = server_settings(values)  # before the service: a bad rules file first
    with Server(
        address, choose_service(values), settings=settings, reload=Reloader(configuration, values)
    ) as server:
        server.serve_forever(ready=announce_port if values["print_port"] else None)
    return 0


def announce_port(server: object) -> None:
    """``--print-port``: the port alone on one line, flushed, once listening (a
    Unix socket's path, or ``@NAME``)."""
    from forkserve._log import write_once
    from forkserve._server import Server

    assert isinstance(server, Server)
    if server.handover is not None:
        return  # an upgrade: same port, and stdout is the old master's reader's
    # Without waiting, as the log is written: stdout may be a pipe nobody reads.
    error = write_once(1, f"{server.listener.printable()}\n".encode())
    if error:
        server.log.warning("print-port-failed", error=error)


def build_parser() -> Parser:
    from forkserve.cli import client
    from forkserve.cli.bench import run as bench
    from forkserve.config.options import add_serve_arguments

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
            client.add_arguments,
            client.run,
        ),
        (
            "bench",
            "load an echo server and verify every byte",
            bench.add_arguments,
            bench.run,
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
