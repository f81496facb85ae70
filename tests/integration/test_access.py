"""Access rules and per-source limits against the real CLI: decided in the parent,
before fork; clients on 127.0.0.2 and 127.0.0.3 are distinct sources."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import WAIT, limit_args, recv_all, run_cli


def connect_from(source: str, port: int, host: str = "127.0.0.1") -> socket.socket:
    """A connection to ``host:port`` from the local address ``source``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.bind((source, 0))
    sock.connect((host, port))
    return sock


def closed_at_once(sock: socket.socket) -> bytes:
    """What a refused client reads before the server's close (EOF or reset)."""
    with sock:
        try:
            return recv_all(sock)
        except ConnectionResetError:
            return b"<reset>"


def peek_now(sock: socket.socket) -> bytes | None:
    """What the socket has to read now (None: nothing yet), left unread."""
    sock.setblocking(False)
    try:
        return sock.recv(100, socket.MSG_PEEK)
    except BlockingIOError:
        return None
    finally:
        sock.settimeout(WAIT)


def served(port: int, source: str, host: str = "127.0.0.1") -> bool:
    with connect_from(source, port, host) as sock:
        sock.sendall(b"ping\n")
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock) == b"ping\n"


def test_flood_from_one_address_cannot_starve_another(serve: ServerFactory, mode: str) -> None:
    server = serve(*limit_args(mode, 100), "--per-ip", "20", "--reject-message", "busy\\r\\n")
    with contextlib.ExitStack() as stack:
        flood = [stack.enter_context(connect_from("127.0.0.2", server.port)) for _ in range(500)]
        # Served while the flood holds its 20 and keeps 480 more knocking (a starved
        # client would hit the socket's timeout): no time threshold, which a loaded
        # machine breaks.
        assert served(server.port, "127.0.0.3")
        rejects = server.wait_event("reject", count=480, reason="per-ip")
        assert all(r["peer"].startswith("127.0.0.2:") for r in rejects)
        # An accept line is written once the connection's process is reported
        # started (by the forker, in fork mode): it may come after the rejects.
        server.wait_event("accept", count=21)  # the 20 let in, and 127.0.0.3's
        accepted = [a for a in server.events("accept") if a["peer"].startswith("127.0.0.2:")]
        assert len(accepted) == 20
        # The rejected ones got the message and were closed; the first 20 are served.
        refused = [sock for sock in flood if peek_now(sock) == b"busy\r\n"]
        assert len(refused) == 480
        assert closed_at_once(refused[0]) == b"busy\r\n"
    server.wait_event("end", count=21)


def test_rate_limit_pauses_one_source_only(serve: ServerFactory) -> None:
    server = serve("--rate", "3/60")
    assert [served(server.port, "127.0.0.2") for _ in range(3)] == [True] * 3
    assert closed_at_once(connect_from("127.0.0.2", server.port)) in (b"", b"<reset>")
    (reject,) = server.wait_event("reject", reason="rate")
    assert reject["peer"].startswith("127.0.0.2:")
    assert served(server.port, "127.0.0.3")
    server.wait_event("end", count=4)  # logged after its accept line
    assert len(server.events("accept")) == 4


def test_deny_and_allow_rules_first_match_wins(serve: ServerFactory) -> None:
    server = serve("--deny", "127.0.0.2", "--allow", "127.0.0.0/8")
    assert closed_at_once(connect_from("127.0.0.2", server.port)) in (b"", b"<reset>")
    (deny,) = server.wait_event("deny")
    assert deny["rule"] == "--deny=127.0.0.2"
    assert deny["peer"].startswith("127.0.0.2:")
    assert served(server.port, "127.0.0.3")
    server.wait_event("end")  # logged after its accept line
    assert len(server.events("accept")) == 1  # the denied client cost no fork


def test_an_allow_list_denies_everyone_else(serve: ServerFactory) -> None:
    server = serve("--allow", "127.0.0.3")
    assert served(server.port, "127.0.0.3")
    assert closed_at_once(connect_from("127.0.0.2", server.port)) in (b"", b"<reset>")
    assert server.wait_event("deny")[0]["rule"] == "default"


RULES = """\
# test rules
127.0.0.2:allow,GREETING="hello, world",ROLE=first
127.0.0.3:deny
:allow,GREETING=anyone
"""


def test_rules_file_sets_the_programs_environment(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    rules = tmp_path / "access.rules"
    rules.write_text(RULES)
    program = ["sh", "-c", 'printf "%s|%s\\n" "$GREETING" "$ROLE"']
    server = start_server("--rules", str(rules), "--", *program)
    assert closed_at_once(connect_from("127.0.0.2", server.port)) == b"hello, world|first\n"
    assert closed_at_once(connect_from("127.0.0.4", server.port)) == b"anyone|\n"
    assert closed_at_once(connect_from("127.0.0.3", server.port)) in (b"", b"<reset>")
    assert server.wait_event("deny")[0]["rule"] == f"{rules}:3"


def test_rule_environment_reaches_a_python_handler(
    serve: ServerFactory, tmp_path: Path, mode: str
) -> None:
    handler = tmp_path / "envhandler.py"
    handler.write_text(
        "import os\n\n\ndef handle(conn, peer):\n"
        "    conn.sendall(os.environ.get('ROLE', '-').encode())\n"
    )
    name = f"{handler}:handle"
    if mode == "async":  # writer.get_extra_info("env"): see asyncmode.connection.Writer
        name = "tests.data.async_handlers:role"
    rules = tmp_path / "access.rules"
    rules.write_text(RULES)
    server = serve("--rules", str(rules), "--handler", name)
    assert closed_at_once(connect_from("127.0.0.2", server.port)) == b"first"
    assert closed_at_once(connect_from("127.0.0.4", server.port)) == b"-"


def test_ipv6_rules_on_loopback(serve: ServerFactory) -> None:
    server = serve("--deny", "::1", address="[::1]:0")
    assert closed_at_once(connect_from("::1", server.port, "::1")) in (b"", b"<reset>")
    assert server.wait_event("deny")[0]["rule"] == "--deny=::1"
    allowed = serve("--allow", "::1/128", "--deny", "::/0", address="[::1]:0")
    assert served(allowed.port, "::1", "::1")


def test_dual_stack_ipv4_clients_match_ipv4_rules(serve: ServerFactory) -> None:
    server = serve("--deny", "127.0.0.2", "--deny", "::/0", address="[::]:0")
    assert closed_at_once(connect_from("127.0.0.2", server.port)) in (b"", b"<reset>")
    (deny,) = server.wait_event("deny")
    assert deny["rule"] == "--deny=127.0.0.2"
    assert served(server.port, "127.0.0.3")  # ::/0 is for IPv6 clients only
    assert closed_at_once(connect_from("::1", server.port, "::1")) in (b"", b"<reset>")
    assert server.wait_event("deny", count=2)[1]["rule"] == "--deny=::/0"


def test_bad_rules_file_is_refused_with_file_line_and_reason(tmp_path: Path) -> None:
    rules = tmp_path / "bad.rules"
    rules.write_text("# fine\n10.0.0.0/8:deny\n10.0.0.1/8:allow\n")
    result = run_cli(["serve", "127.0.0.1:0", "--rules", str(rules)])
    assert result.returncode == 100
    assert result.stderr.decode() == (
        f"forkserve serve: rules file '{rules}', line 3: "
        "'10.0.0.1/8' has bits set past its prefix length\n"
    )
    missing = run_cli(["serve", "127.0.0.1:0", "--rules", str(tmp_path / "none")])
    assert missing.returncode == 100
    assert "cannot read rules file" in missing.stderr.decode()
    assert missing.stderr.decode().count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--allow", "10.0.0.1/8"], "bits set past its prefix"),
        (["--deny", "example.com"], "invalid address"),
        (["--deny", "::/129"], "over 128"),
        (["--default-policy", "maybe"], "invalid choice"),
        (["--per-ip", "0"], "1 or more"),
        (["--per-ip", "x"], "1 or more"),
        (["--ipv6-prefix", "129"], "0 to 128"),
        (["--ipv6-prefix", "-1"], "0 to 128"),
        (["--rate", "10"], "N/SECONDS"),
        (["--rate", "0/1"], "N/SECONDS"),
        (["--rate", "5/0"], "N/SECONDS"),
        (["--reject-message", "bad\\q"], "invalid escape"),
        (["--idle-timeout", "0"], "more than 0 seconds"),
        (["--idle-timeout", "inf"], "more than 0 seconds"),
        (["--max-lifetime", "-1"], "more than 0 seconds"),
        (["--handshake-timeout", "soon"], "expected seconds"),
        (["--user", "no-such-user-here"], "no such user"),
        (["--group", "no-such-group-here"], "no such group"),
        (["--limit-nofile", "0"], "1 or more"),
        (["--limit-as", "12X"], "expected a size"),
        (["--limit-cpu", "1.5"], "1 or more"),
        (["--limit-nproc", "-3"], "1 or more"),
        (["--limit-nofile", str(2**62)], "above the hard limit"),
        (["--idle-timeout", "1", "--", "cat"], "--idle-timeout applies to Python handlers"),
    ],
)
def test_bad_values_are_one_line_and_exit_100(args: list[str], message: str) -> None:
    result = run_cli(["serve", "127.0.0.1:0", *args])
    stderr = result.stderr.decode()
    assert result.returncode == 100, stderr
    assert message in stderr
    assert stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
