from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import WAIT, ServerProcess, mode_args

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def start_server() -> Iterator[ServerFactory]:
    """Start ``forkserve serve`` subprocesses; each is stopped and checked at teardown."""
    started: list[ServerProcess] = []

    def start(*args: str, **kwargs: Any) -> ServerProcess:
        server = ServerProcess(args, **kwargs)
        started.append(server)
        return server

    yield start
    leftovers = []
    for server in started:
        leftovers.extend(server.close())
    assert not leftovers, f"processes left behind: {leftovers}"


@pytest.fixture(params=["fork", "prefork"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both process models: a test that takes ``serve`` runs once for each."""
    return str(request.param)


@pytest.fixture
def serve(start_server: ServerFactory, mode: str) -> ServerFactory:
    """``start_server`` in the current ``mode``."""

    def start(*args: str, **kwargs: Any) -> ServerProcess:
        return start_server(*mode_args(mode), *args, **kwargs)

    return start


def make_cert(
    directory: Path, name: str, signer: tuple[Path, Path] | None = None
) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    args = ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key)]
    args += ["-subj", f"/CN={name}/O=forkserve", "-days", "2", "-out", str(cert)]
    if signer is None:
        args += ["-x509", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
        subprocess.run(args, check=True, capture_output=True, timeout=WAIT)
        return cert, key
    csr = directory / f"{name}.csr"
    args[args.index("-out") + 1] = str(csr)
    subprocess.run(args, check=True, capture_output=True, timeout=WAIT)
    subprocess.run(
        [
            *("openssl", "x509", "-req", "-in", str(csr), "-CA", str(signer[0])),
            *("-CAkey", str(signer[1]), "-CAcreateserial", "-days", "2", "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=WAIT,
    )
    return cert, key


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("certs")
    server = make_cert(directory, "localhost")
    ca = make_cert(directory, "clientca")
    return {"server": server, "ca": ca, "client": make_cert(directory, "alice", ca)}
