"""The built-in services' pure parts: RFC 864's pattern, RFC 867's line."""

from __future__ import annotations

import time

from forkserve.child.builtins import (
    BUILTINS,
    chargen_block,
    chargen_line,
    daytime_line,
)


def test_chargen_lines_match_rfc_864() -> None:
    # RFC 864's sample output begins with these two lines: line 0 of the ring starts
    # with the space (invisible in print), so they are lines 1 and 2.
    assert chargen_line(1) == (
        b"!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefgh\r\n"
    )
    assert chargen_line(2) == (
        b"\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghi\r\n"
    )
    assert chargen_line(0).startswith(b" !")


def test_chargen_lines_rotate_through_95_characters() -> None:
    for n in range(200):
        line = chargen_line(n)
        assert line.endswith(b"\r\n")
        body = line[:-2]
        assert len(body) == 72
        assert body[0] == 32 + n % 95
        assert all(32 <= c <= 126 for c in body)
        assert all((body[i + 1] - 32) == (body[i] - 32 + 1) % 95 for i in range(71))
    assert chargen_line(95) == chargen_line(0)


def test_chargen_block_is_one_period() -> None:
    block = chargen_block()
    assert len(block) == 95 * 74
    assert block.splitlines(keepends=True) == [chargen_line(n) for n in range(95)]


def test_daytime_is_one_ctime_line() -> None:
    now = 1_800_000_000.0
    line = daytime_line(now)
    assert line == time.ctime(now).encode() + b"\r\n"
    assert line.count(b"\n") == 1
    assert all(32 <= c < 127 for c in line[:-2])


def test_builtins_are_named() -> None:
    assert set(BUILTINS) == {"echo", "discard", "daytime", "chargen"}
