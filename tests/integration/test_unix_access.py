"""Access rules by uid/gid and --per-ip per uid on a Unix socket (issue 15, part 1)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.integration.test_unix import unix_connect, unix_roundtrip
from tests.support import WAIT, recv_all, recv_exactly

NOBODY = 65534
# A client of another uid is socat, run as nobody (forkserve's Python may sit where
# nobody cannot read it), on the abstract NAME: an abstract socket has no file, so no
# permission to pass.
as_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("socat") is None,
    reason="a client of another uid needs root (and socat)",
)


def abstract(tmp_path: Path) -> str:
    return f"forkserve-access-{os.getpid()}-{tmp_path.name}"


def as_nobody(name: str, check: bool = True) -> bytes:
    result = subprocess.run(
        ["socat", "-", f"ABSTRACT-CONNECT:{name}"],
        input=b"as nobody",
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        timeout=WAIT,
        check=check,
    )
    return result.stdout


@as_root
def test_per_ip_is_per_uid(serve: ServerFactory, tmp_path: Path) -> None:
    name = abstract(tmp_path)
    server = serve("--per-ip", "1", "--reject-message", "busy\\n", address=f"unix:@{name}")
    with unix_connect(b"\0" + name.encode()) as held:
        held.sendall(b"mine")
        assert recv_exactly(held, 4) == b"mine"
        # Same uid: over the limit, refused with the message, no process.
        with unix_connect(b"\0" + name.encode()) as second:
            assert recv_all(second) == b"busy\n"
        server.wait_event("reject", reason="per-ip")
        # Another uid has a limit of its own.
        assert as_nobody(name) == b"as nobody"
    rejected = server.events("reject")[0]
    assert f"uid:{os.getuid()}" in rejected["peer"]


@as_root
def test_uid_rules(serve: ServerFactory, tmp_path: Path) -> None:
    name = abstract(tmp_path)
    server = serve("--deny", f"uid:{NOBODY}", address=f"unix:@{name}")
    assert as_nobody(name, check=False) == b""  # closed at once: socat may see a reset
    denied = server.wait_event("deny", rule=f"--deny=uid:{NOBODY}")[0]
    assert f"uid:{NOBODY}" in denied["peer"]
    assert unix_roundtrip(b"\0" + name.encode(), b"root may") == b"root may"


def test_gid_allow_list_and_rule_variables(start_server: ServerFactory, tmp_path: Path) -> None:
    rules = tmp_path / "local.rules"
    rules.write_text(f'gid:{os.getgid()}:allow,ROLE="local team"\n10.0.0.0/8:allow\n')
    path = tmp_path / "env.sock"
    program = [sys.executable, "-c", "import os; print(os.environ.get('ROLE'))"]
    start_server("--rules", str(rules), "--", *program, address=f"unix:{path}")
    with unix_connect(str(path)) as sock:
        assert recv_all(sock) == b"local team\n"


def test_an_ip_rule_never_matches_a_unix_client(serve: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "ip.sock"
    server = serve("--allow", "0.0.0.0/0", "--allow", "::/0", address=f"unix:{path}")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(path))
        assert recv_all(sock) == b""
    server.wait_event("deny", rule="default")
