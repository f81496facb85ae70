"""Modules the serving parent imports stay lean: fork cost grows with parent memory."""

from __future__ import annotations

import subprocess
import sys

HEAVY = [
    "typing",
    "dataclasses",
    "inspect",
    "traceback",
    "json",
    "ipaddress",
    "pathlib",
    "prometheus_client",  # only with --metrics
    "socketserver",  # only for a socketserver handler class (child/requesthandler.py)
]

SCRIPT = f"""
import sys
import forkserve
import forkserve.cli.main
import forkserve.child.exec
import forkserve.config.handler
import forkserve.child.builtins
import forkserve.parent.privileges
import forkserve.core.rules
import forkserve.core.gate
import forkserve.child.prelude
import forkserve.config.options
import forkserve.config.table
import forkserve.config.settings
import forkserve.parent.assemble
# Operations: imported with --metrics, under systemd, at the first SIGHUP or SIGUSR2.
import forkserve.core.metrics
import forkserve.parent.endpoint
import forkserve.parent.systemd
import forkserve.core.activation
import forkserve.config.reload
import forkserve.parent.upgrade
# What `forkserve serve` itself runs before it forks: the whole parser is built.
forkserve.cli.main.build_parser().parse_args(["serve", "0"])
forkserve.config.handler.load_handler("echo")
forkserve.parent.assemble.make_service(forkserve.echo, None, None, "fork")
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(" ".join(heavy))
"""


def test_parent_modules_import_nothing_heavy() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, timeout=30, check=True
    )
    assert result.stdout.decode().split() == []


# The supervisor's recipe for a forker (parent.forkerstart.make_recipe), from a
# command line as `forkserve serve` resolves it (cli.main.run_serve).
RECIPE = """
import sys
from forkserve.cli.main import build_parser, split_program
from forkserve.config.options import Configuration, choose_service, server_settings
from forkserve.parent.forkerstart import make_recipe

own, program = split_program(sys.argv[1:])
args = build_parser().parse_args(own)
given = {k: v for k, v in vars(args).items() if k not in ("command", "run", "program", "config")}
if program:
    given["program"] = program
values = Configuration(given, None).resolve()
settings = server_settings(values)
sys.stdout.buffer.write(make_recipe(settings, settings, choose_service(values)))
"""

# What the forker runs before it serves (forker.process.main: its imports, then
# build), fed the recipe on a socketpair as the supervisor feeds it.
FORKER = f"""
import socket
import sys
import forkserve.forker.process as process

ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
ours.send(sys.stdin.buffer.read())
process.build(theirs)
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(" ".join(heavy))
"""


def forker_imports(*serve: str) -> list[str]:
    """The heavy modules a forker holds once built for ``forkserve serve SERVE...``."""
    recipe = subprocess.run(
        [sys.executable, "-c", RECIPE, "serve", *serve],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    assert recipe
    result = subprocess.run(
        [sys.executable, "-c", FORKER], input=recipe, capture_output=True, timeout=30, check=True
    )
    return result.stdout.decode().split()


def test_forker_imports_nothing_heavy() -> None:
    # Rules, limits and --metrics are the supervisor's (it parsed the rules with
    # ipaddress and serves /metrics); the forker and its children hold none of it.
    serve = ["127.0.0.1:0", "--allow", "127.0.0.0/8", "--per-ip", "5", "--metrics", "127.0.0.1:0"]
    assert forker_imports(*serve, "--handler", "echo") == []
    assert forker_imports(*serve, "--limit-nofile", "64", "--", "cat") == []


def test_forker_behind_proxy_holds_ipaddress_once() -> None:
    # Its children parse the PROXY header's addresses: ipaddress is loaded before
    # they are forked, and nothing else heavy.
    serve = ["127.0.0.1:0", "--proxy-protocol", "v1", "--handler", "echo"]
    assert forker_imports(*serve) == ["ipaddress"]


POLICY = """
import sys
from forkserve.cli.main import build_parser
from forkserve.config.options import Configuration, server_settings
from forkserve.parent.assemble import make_policy

args = build_parser().parse_args(sys.argv[1:])
given = {k: v for k, v in vars(args).items() if k not in ("command", "run", "program", "config")}
make_policy(server_settings(Configuration(given, None).resolve()), None)
print("ipaddress" in sys.modules)
"""


def test_workers_get_ipaddress_from_their_supervisor() -> None:
    # Prefork and async workers parse each peer (the rules are applied in them):
    # ipaddress is loaded once before they are forked, not by each at its first
    # connection; a fork-mode policy (built in the forker too) leaves it out.
    def loaded(*serve: str) -> bool:
        argv = [sys.executable, "-c", POLICY, "serve", "8000", *serve]
        result = subprocess.run(argv, capture_output=True, timeout=30, check=True)
        return result.stdout.decode().split() == ["True"]

    assert loaded("--mode", "prefork")
    assert loaded("--mode", "async")
    assert not loaded("--mode", "fork")
