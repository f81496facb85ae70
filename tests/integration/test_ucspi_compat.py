"""The same program under forkserve and under ucspi-tcp's tcpserver sees the same
UCSPI variables, for the same shape of connection.

Ports differ between the two servers and clients, so those are checked against each
server's own port and each client's own address; every other value must be equal.
forkserve adds TCPCONNNUM (s6-tcpserver's) and its TCP6 twin, which tcpserver lacks.

Debian has two tcpservers, which conflict: ucspi-tcp-ipv6's (Felix von Leitner's IPv6
patch) writes every variable twice, TCP* and TCP6*, and takes -4/-6; plain ucspi-tcp's
(djb's 0.88, the common package) knows no TCP6* name, neither writing one nor dropping
an inherited one. Against plain tcpserver only what it promises is compared: PROTO and
the TCP* names (forkserve's TCP6* twins are checked by the ipv6 variant's tests and
the unit tests).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import WAIT, connect, recv_all

UCSPI_ENV = str(Path(__file__).parents[1] / "data" / "ucspi_env.sh")
ONLY_FORKSERVE = {"TCPCONNNUM", "TCP6CONNNUM"}
# Inherited values both servers must drop: they do not describe this connection.
STALE = {"TCPREMOTEHOST": "stale", "TCPREMOTEINFO": "stale", "TCP6REMOTEHOST": "stale"}

needs_tcpserver = pytest.mark.skipif(
    shutil.which("tcpserver") is None, reason="tcpserver (Debian ucspi-tcp) not installed"
)


@functools.cache
def tcpserver_has_ipv6() -> bool:
    """Debian's ucspi-tcp-ipv6 tcpserver takes -4/-6; plain ucspi-tcp's does not.

    Its usage line lists its flags: ``tcpserver: usage: tcpserver [ -461UXpPhHrRoOdDqQv ]``
    with IPv6, ``[ -1UXpPhHrRoOdDqQv ]`` without.
    """
    usage = subprocess.run(
        ["tcpserver"], capture_output=True, timeout=WAIT, check=False
    ).stderr.decode()
    flags = usage.partition("[")[2].partition("]")[0]
    assert "U" in flags, f"not a tcpserver usage line: {usage!r}"
    return "6" in flags


def promised(env: dict[str, str]) -> dict[str, str]:
    """The variables this tcpserver promises: all, or without IPv6 no TCP6* name."""
    if tcpserver_has_ipv6():
        return env
    return {name: value for name, value in env.items() if not name.startswith("TCP6")}


def read_env(port: int, host: str) -> tuple[dict[str, str], int]:
    with connect(port, host) as sock:
        client_port = sock.getsockname()[1]
        text = recv_all(sock).decode()
    return dict(line.split("=", 1) for line in text.splitlines()), client_port


def compare(
    start_server: ServerFactory, listen_host: str, client_host: str, *extra: str
) -> dict[str, str]:
    """Run the env program under both servers; assert they agree; return forkserve's."""
    env = {**os.environ, **STALE}
    bracketed = f"[{listen_host}]" if ":" in listen_host else listen_host
    ours = start_server(*extra, "--", UCSPI_ENV, address=f"{bracketed}:0", env=env)
    # -R: no ident (TCPREMOTEINFO), -H: no remote lookup, -l: no local lookup;
    # forkserve's defaults, and its --local-host.
    tcpserver_host = "0" if listen_host == "::" else listen_host
    tcpserver = ["tcpserver", "-1", "-R", "-H", *extra_to_tcpserver(extra)]
    theirs = start_server(tcpserver_host, "0", UCSPI_ENV, command=tcpserver, env=env)
    fs_all, fs_client = read_env(ours.port, client_host)
    ts_all, ts_client = read_env(theirs.port, client_host)
    fs_env, ts_env = promised(fs_all), promised(ts_all)
    assert fs_env.keys() - ONLY_FORKSERVE == ts_env.keys(), (fs_env, ts_env)
    for name, value in ts_env.items():
        if name.endswith("LOCALPORT"):
            assert (fs_env[name], value) == (str(ours.port), str(theirs.port))
        elif name.endswith("REMOTEPORT"):
            assert (fs_env[name], value) == (str(fs_client), str(ts_client))
        else:
            assert fs_env[name] == value, name
    return fs_all


def extra_to_tcpserver(extra: tuple[str, ...]) -> list[str]:
    """forkserve's --local-host NAME is tcpserver's -l NAME."""
    if "--local-host" in extra:
        return ["-l", extra[extra.index("--local-host") + 1]]
    return []


@needs_tcpserver
def test_ipv4_same_as_tcpserver(start_server: ServerFactory) -> None:
    env = compare(start_server, "127.0.0.1", "127.0.0.1", "--local-host", "myname")
    assert env["PROTO"] == "TCP"
    assert env["TCPLOCALHOST"] == "myname"
    assert env["TCPCONNNUM"] == "0"
    assert "stale" not in env.values()


@needs_tcpserver
def test_ipv6_same_as_tcpserver6(start_server: ServerFactory) -> None:
    if not tcpserver_has_ipv6():
        pytest.skip("this tcpserver has no IPv6: install ucspi-tcp-ipv6")
    env = compare(start_server, "::1", "::1", "--local-host", "myname")
    assert env["PROTO"] == "TCP6"
    assert env["TCPREMOTEIP"] == "::1"


@needs_tcpserver
def test_ipv4_client_of_dual_stack_same_as_tcpserver6(start_server: ServerFactory) -> None:
    if not tcpserver_has_ipv6():
        pytest.skip("this tcpserver has no IPv6: install ucspi-tcp-ipv6")
    env = compare(start_server, "::", "127.0.0.1", "--local-host", "myname")
    assert env["PROTO"] == "TCP"
    assert env["TCPREMOTEIP"] == "127.0.0.1"
    assert env["TCP6REMOTEIP"] == "::ffff:127.0.0.1"
