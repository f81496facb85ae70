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
