"""The connection's process's side of admission (child.ask.Asker), against a socketpair
standing in for the supervisor: the answer is queued before the question is asked."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from forkserve._log import Log
from forkserve.child.ask import Asker
from forkserve.child.connection import Connection
from forkserve.child.edge import EXIT_EDGE_FAILED
from forkserve.core.gate import Gate, Policy, encode_denied, encode_question
from forkserve.core.rules import RuleSet, parse_rules

RULES = b'127.0.0.1:allow,RELAYCLIENT=""\n198.51.100.0/24:allow,ROLE=b\n:deny\n'


@pytest.fixture
def log() -> Iterator[tuple[Log, int]]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    yield Log(fd=write), read
    os.close(read)
    os.close(write)


def policy() -> Policy:
    rules = RuleSet(parse_rules(RULES, "r"), default_allow=False)
    return Policy(Gate(rules, per_ip=2), b"busy\r\n", proxy=True)


def pairs() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """(client, conn) of a connection, and (supervisor, asker) of a channel."""
    client, conn = socket.socketpair()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (client, ours):
        sock.settimeout(5)
    return client, conn, ours, theirs


def test_admitted_gets_the_rule_variables_and_its_count(log: tuple[Log, int]) -> None:
    client, conn, ours, theirs = pairs()
    info = Connection(("198.51.100.7", 4000))
    ours.send(b"ok 3")
    assert Asker(policy(), log[0], theirs, single=True)(conn, info) is None
    source = Gate().source("198.51.100.7")
    assert ours.recv(256) == encode_question(source, "198.51.100.7:4000")
    assert (info.connnum, info.env) == (3, {"ROLE": "b"})
    assert theirs.fileno() == -1  # a fork-mode child's channel: used once, closed
    assert conn.fileno() != -1  # still the client's, for the handler
    for sock in (client, conn, ours):
        sock.close()


def test_denied_by_the_rules_never_asks(log: tuple[Log, int]) -> None:
    client, conn, ours, theirs = pairs()
    info = Connection(("203.0.113.9", 4000))
    assert Asker(policy(), log[0], theirs, single=True)(conn, info) == EXIT_EDGE_FAILED
    assert conn.fileno() == -1
    assert client.recv(10) == b""
    assert ours.recv(256) == encode_denied("203.0.113.9:4000")
    assert ours.recv(256) == b""  # then closed: no answer is awaited
    line = os.read(log[1], 4096).decode()
    assert "deny pid=" in line
    assert "peer=203.0.113.9:4000 rule=r:3" in line
    for sock in (client, ours):
        sock.close()


def test_a_worker_reports_a_denial_on_its_status_socket(log: tuple[Log, int]) -> None:
    client, conn, ours, theirs = pairs()
    reports: list[tuple[str, str]] = []
    asker = Asker(policy(), log[0], theirs, report=lambda *r: reports.append(r))
    assert asker(conn, Connection(("203.0.113.9", 4000))) == EXIT_EDGE_FAILED
    assert reports == [("D", "203.0.113.9:4000")]
    ours.setblocking(False)
    with pytest.raises(BlockingIOError):
        ours.recv(256)  # nothing on the channel, which stays open for the next one
    assert theirs.fileno() != -1
    for sock in (client, ours, theirs):
        sock.close()


def test_refused_by_a_limit_gets_the_message(log: tuple[Log, int]) -> None:
    client, conn, ours, theirs = pairs()
    ours.send(b"no")
    info = Connection(("127.0.0.1", 4000))
    assert Asker(policy(), log[0], theirs)(conn, info) == EXIT_EDGE_FAILED
    assert client.recv(10) == b"busy\r\n"
    assert client.recv(10) == b""
    assert info.env == {}  # a refused client's rule variables are never set
    for sock in (client, ours, theirs):
        sock.close()


def test_without_a_channel_the_rules_decide_alone(log: tuple[Log, int]) -> None:
    client, conn = socket.socketpair()
    info = Connection(("127.0.0.1", 4000))
    assert Asker(policy(), log[0], None)(conn, info) is None
    assert (info.connnum, info.env) == (1, {"RELAYCLIENT": ""})
    client.close()
    conn.close()
