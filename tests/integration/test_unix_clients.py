"""``forkserve client unix:PATH`` and ``forkserve bench unix:PATH``, every bench mode
(issue 15, part 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.integration.test_bench import MODE_ARGS, QUICK
from tests.support import run_cli


def test_client_over_a_socket_file(serve: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    server = serve(address=f"unix:{path}")
    done = run_cli(["client", f"unix:{path}"], input=b"one\ntwo\n" * 1000)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"one\ntwo\n" * 1000, b"")
    server.wait_event("end", exit=0)


def test_client_over_an_abstract_name(start_server: ServerFactory, tmp_path: Path) -> None:
    name = f"forkserve-client-{os.getpid()}-{tmp_path.name}"
    start_server(address=f"unix:@{name}")
    done = run_cli(["client", f"unix:@{name}"], input=b"abstract\n")
    assert (done.returncode, done.stdout) == (0, b"abstract\n")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["unix:{dir}/none.sock"], 111, "cannot connect to unix:{dir}/none.sock: "),
        (["unix:{dir}/x.sock", "9000"], 100, "is a Unix socket: it takes no PORT"),
        (["127.0.0.1"], 100, "the PORT is missing"),
        (["unix:"], 100, "empty Unix socket address"),
        (["unix:{dir}/x.sock", "--proxy", "v1"], 100, "--proxy names TCP addresses"),
        (["unix:{dir}/x.sock", "--tls"], 100, "--tls over a Unix socket needs --insecure"),
    ],
)
@pytest.mark.parametrize("command", ["client", "bench"])
def test_bad_unix_targets_are_one_line(
    tmp_path: Path, command: str, args: list[str], code: int, message: str
) -> None:
    argv = [arg.format(dir=tmp_path) for arg in args]
    done = run_cli([command, *argv])
    lines = done.stderr.decode().splitlines()
    assert done.returncode == code, lines
    assert len(lines) == 1 and message.format(dir=tmp_path) in lines[0], lines


@pytest.mark.parametrize("workload", list(MODE_ARGS))
def test_bench_every_mode_over_a_unix_socket(
    serve: ServerFactory, tmp_path: Path, workload: str
) -> None:
    path = tmp_path / "bench.sock"
    serve("-q", address=f"unix:{path}")
    argv = ["bench", f"unix:{path}", *QUICK, "-m", workload, "--json", *MODE_ARGS[workload]]
    done = run_cli(argv, timeout=60)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["target"], data["ok"], data["error_count"]) == (f"unix:{path}", True, 0)
    assert data["operations"] > 0 and data["verified_bytes"] > 0
