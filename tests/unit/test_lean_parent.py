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
]

SCRIPT = f"""
import sys
import forkserve, forkserve._cli, forkserve._exec, forkserve._load, forkserve._services
import forkserve._privileges, forkserve._rules, forkserve._limits, forkserve._prelude
import forkserve._configure, forkserve._table, forkserve._settings, forkserve._build
# Operations: imported with --metrics, under systemd, at the first SIGHUP or SIGUSR2.
import forkserve._metrics, forkserve._endpoint, forkserve._systemd, forkserve._activation
import forkserve._reload, forkserve._upgrade
# What `forkserve serve` itself runs before it forks: the whole parser is built.
forkserve._cli.build_parser().parse_args(["serve", "0"])
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(" ".join(heavy))
"""


def test_parent_modules_import_nothing_heavy() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, timeout=30, check=True
    )
    assert result.stdout.decode().split() == []
