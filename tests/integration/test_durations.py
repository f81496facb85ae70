"""Durations past what poll(2) can wait for are refused at start (issue 12, finding 4).

Before, ``--grace``, ``--max-lifetime`` or ``--upgrade-timeout`` over 2**31 ms (24.8
days) were taken, and the parent died with an OverflowError traceback the first time
its loop waited on one (children orphaned); ``--handshake-timeout`` and
``--idle-timeout`` failed in every child.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from forkserve.config.settings import SECONDS, TIMEOUT
from forkserve.config.table import SERVE
from forkserve.core.gate import MAX_SECONDS
from tests.integration.conftest import ServerFactory
from tests.support import connect, recv_exactly, run_cli

DURATIONS = [setting.key for setting in SERVE if setting.kind in (SECONDS, TIMEOUT)]
TOO_LONG = str(MAX_SECONDS + 1)
LIMIT = f"at most {MAX_SECONDS} seconds"


def refused(result: subprocess.CompletedProcess[bytes]) -> str:
    """The one-line error of a run that must exit 100."""
    stderr = result.stderr.decode()
    assert result.returncode == 100, stderr
    assert "Traceback" not in stderr
    assert len(stderr.splitlines()) == 1, stderr
    return stderr


@pytest.mark.parametrize("key", DURATIONS)
def test_a_duration_too_long_is_refused_on_the_command_line(key: str) -> None:
    stderr = refused(run_cli(["serve", "127.0.0.1:0", f"--{key}", TOO_LONG]))
    assert f"--{key}" in stderr
    assert LIMIT in stderr


@pytest.mark.parametrize("key", DURATIONS)
def test_a_duration_too_long_is_refused_in_the_config_file(key: str, tmp_path: Path) -> None:
    config = tmp_path / "f.toml"
    config.write_text(f"{key} = {TOO_LONG}\n")
    stderr = refused(run_cli(["serve", "127.0.0.1:0", "--config", str(config)]))
    assert f"{key}: expected {LIMIT}" in stderr


@pytest.mark.parametrize("command", ["client", "bench"])
def test_the_client_and_bench_timeouts_are_bounded(command: str) -> None:
    stderr = refused(run_cli([command, "--timeout", TOO_LONG, "127.0.0.1", "9"]))
    assert LIMIT in stderr


def test_a_reload_to_a_duration_too_long_keeps_the_running_one(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    config = tmp_path / "f.toml"
    config.write_text("grace = 5\n")
    server = start_server("--config", str(config))
    config.write_text(f"grace = {TOO_LONG}\n")
    server.send_signal(signal.SIGHUP)
    assert LIMIT in server.wait_event("reload-failed")[0]["error"]
    with connect(server.port) as held:  # a stop now waits on the running grace, 5 s
        held.sendall(b"x")
        assert recv_exactly(held, 1) == b"x"
        server.send_signal(signal.SIGTERM)
        assert server.wait_event("stop")[0]["grace"] == "5.0s"
    assert server.wait_exit() == 0


@pytest.mark.parametrize("key", ["limit-cpu", "limit-as", "limit-nproc"])
def test_a_resource_limit_too_large_is_refused_at_start(key: str) -> None:
    """--limit-cpu is CPU seconds: past 2**63 - 1 every child died with an
    OverflowError traceback in setrlimit; now it is refused at start."""
    stderr = refused(run_cli(["serve", "127.0.0.1:0", f"--{key}", str(2**64)]))
    assert "too large" in stderr
