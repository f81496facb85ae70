from __future__ import annotations

import signal

from hypothesis import given
from hypothesis import strategies as st

from forkserve._children import Child, decode_status, describe_signal
from forkserve._events import escape_bytes, format_timestamp, format_value, render_text
from tests.support import parse_line


def test_timestamp_is_iso_utc_with_milliseconds() -> None:
    assert format_timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(1_764_028_676.1239) == "2025-11-24T23:57:56.123Z"


def test_render_text() -> None:
    line = render_text(0.0, "accept", {"peer": "1.2.3.4:5", "pid": 42, "conns": "1/10"})
    assert line == "1970-01-01T00:00:00.000Z accept peer=1.2.3.4:5 pid=42 conns=1/10"


def test_peer_bytes_are_escaped_and_capped() -> None:
    assert escape_bytes(b"ok\x00\xff\n") == "ok\\x00\\xff\\x0a"
    assert escape_bytes(b"a" * 70, limit=64) == "a" * 64 + "...(+6 bytes)"


@given(st.one_of(st.text(), st.binary(), st.integers()))
def test_values_never_break_the_line(value: object) -> None:
    text = format_value(value)
    assert text
    assert "\n" not in text
    assert " " not in text or text.startswith('"')
    line = render_text(0.0, "x", {"k": value, "z": 1})
    parsed = parse_line(line)
    assert parsed is not None
    assert parsed[1]["z"] == "1"


def test_decode_status() -> None:
    child = Child(1, "peer", 0.0)
    assert decode_status(1, 0, child).status_fields() == {"exit": 0}
    assert decode_status(1, 3 << 8, child).status_fields() == {"exit": 3}
    assert decode_status(1, signal.SIGKILL, child).status_fields() == {"signal": "SIGKILL(9)"}
    assert decode_status(1, signal.SIGSEGV | 0x80, None).status_fields() == {
        "signal": "SIGSEGV(11)",
        "core": "yes",
    }
    assert describe_signal(99) == "SIG99(99)"


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_stamper_agrees_with_format_timestamp(ts: float) -> None:
    from forkserve._events import Stamper

    stamp = Stamper()
    assert stamp(ts) == format_timestamp(ts)
    assert stamp(ts + 1.25) == format_timestamp(ts + 1.25)  # a new second
    assert stamp(ts) == format_timestamp(ts)  # and back
