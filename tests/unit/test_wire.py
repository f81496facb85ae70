"""The supervisor-worker wire format: status datagrams (prefork.wire) and the
questions a connection's process asks (core.gate), whole and refused."""

from __future__ import annotations

import pytest

from forkserve.core.gate import (
    decode_answer,
    decode_question,
    encode_answer,
    encode_denied,
    encode_question,
)
from forkserve.prefork.wire import decode, encode


@pytest.mark.parametrize(
    ("kind", "pid", "detail"),
    [
        ("R", 7, ""),
        ("A", 123, "127.0.0.1:5555"),
        ("A", 123, "[::1]:5555"),
        ("E", 99999, "0"),
        ("P", 1, "EMFILE"),
        ("D", 5, "peer with spaces and é"),
    ],
)
def test_a_status_datagram_round_trips(kind: str, pid: int, detail: str) -> None:
    assert decode(encode(kind, pid, detail)) == (kind, pid, detail)


def test_an_undecodable_peer_is_escaped_not_lost() -> None:
    kind, pid, detail = decode(encode("A", 3, "\udcff"))
    assert (kind, pid) == ("A", 3)
    assert detail == "\\udcff"


@pytest.mark.parametrize("data", [b"", b"A", b"A notapid x", b"garbage"])
def test_a_datagram_encode_did_not_write_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


def test_a_question_and_its_answers_round_trip() -> None:
    assert decode_question(encode_question(42, "192.0.2.1:80")) == (42, "192.0.2.1:80")
    assert decode_question(encode_denied("192.0.2.1:80")) == (None, "192.0.2.1:80")
    assert decode_answer(encode_answer(3)) == 3
    assert decode_answer(encode_answer(0)) == 0
