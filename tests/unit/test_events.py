from __future__ import annotations

import json
import signal

from hypothesis import given
from hypothesis import strategies as st

from forkserve.core.logline import (
    VALUE_LIMIT,
    clip,
    escape_bytes,
    escape_controls,
    format_timestamp,
    format_value,
    json_value,
    render_json,
    render_text,
)
from forkserve.parent.children import Child, decode_status, describe_signal
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


PIPE_BUF = 4096


@given(st.text(min_size=1), st.integers(1, 3000))
def test_a_clipped_value_fits_its_limit_once_escaped(char: str, count: int) -> None:
    text = (char * count)[:count]
    shown = clip(text)
    assert len(json.dumps(shown)) - 2 <= VALUE_LIMIT
    kept, note, _ = shown.partition("...(+")
    assert shown == text or (note and text.startswith(kept) and shown.endswith(" chars)"))


def test_a_huge_value_from_a_peer_keeps_the_line_under_pipe_buf() -> None:
    """A 2 KB PROXY authority of control characters, or of emoji: the line stays one
    atomic write in both formats, and no control character reaches it raw."""
    for authority in ("\x01\x1b[2J" * 700, "\U0001f600" * 2000, "a" * 5000, "\u2028" * 900):
        fields = {"pid": 7, "peer": "[2001:db8::7]:65535", "authority": authority, "via": "x"}
        for line in (render_text(0.0, "proxy", fields), render_json(0.0, "proxy", fields)):
            assert len(line.encode()) < 1024 < PIPE_BUF
            assert line.isascii() or line.isprintable()
            assert "\x1b" not in line and "\x01" not in line and "\u2028" not in line
        parsed = parse_line(render_text(0.0, "proxy", fields))
        assert parsed is not None and parsed[1]["via"] == "x"
        assert parsed[1]["authority"].startswith(authority[:8])
        assert parsed[1]["authority"].endswith(" chars)")


def test_short_values_are_shown_whole() -> None:
    name = "a" * 253  # the longest DNS name
    assert clip(name) == name
    assert render_text(0.0, "proxy", {"authority": name}).endswith(f"authority={name}")
    assert json.loads(render_json(0.0, "x", {"e": "caf\u00e9 \x00"}))["e"] == "caf\u00e9 \x00"


def test_multi_line_text_keeps_its_newlines_and_nothing_else_raw() -> None:
    text = "Traceback\n  x\nValueError: \x1b[2J\r\t\u2028caf\u00e9\n"
    assert escape_controls(text) == "Traceback\n  x\nValueError: \\x1b[2J\\r\\t\\u2028caf\u00e9\n"
    assert escape_controls("plain") == "plain"


def test_a_traceback_keeps_its_end() -> None:
    text = "Traceback (most recent call last):\n" + '  File "x.py", line 1\n' * 500
    text += "KeyError: 'boom'\n"
    record = json.loads(render_json(0.0, "handler-error", {"traceback": text, "error": "E"}))
    assert record["traceback"].endswith("KeyError: 'boom'\n")
    assert record["traceback"].startswith("(+")
    assert len(render_json(0.0, "handler-error", {"traceback": text})) < PIPE_BUF


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


@given(st.dictionaries(st.text(min_size=1), st.one_of(st.text(), st.binary(), st.integers())))
def test_json_line_has_the_text_line_fields(fields: dict[str, object]) -> None:
    fields = {k: v for k, v in fields.items() if k not in ("ts", "event") and k.isidentifier()}
    line = render_json(0.0, "x", fields)
    assert "\n" not in line
    assert line.isascii()
    record = json.loads(line)
    assert record.pop("ts") == "1970-01-01T00:00:00.000Z"
    assert record.pop("event") == "x"
    text = parse_line(render_text(0.0, "x", fields))
    assert text is not None
    assert {k: str(v) for k, v in record.items()} == text[1]


def test_json_values() -> None:
    assert json_value(3) == 3
    assert json_value(True) is True
    assert json_value(0.12345) == 0.123
    assert json_value(b"\x00a") == "\\x00a"
    assert json_value("1/10") == "1/10"


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_stamper_agrees_with_format_timestamp(ts: float) -> None:
    from forkserve.core.logline import Stamper

    stamp = Stamper()
    assert stamp(ts) == format_timestamp(ts)
    assert stamp(ts + 1.25) == format_timestamp(ts + 1.25)  # a new second
    assert stamp(ts) == format_timestamp(ts)  # and back
