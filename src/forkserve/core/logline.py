"""Rendering of log events as text lines or JSON objects (pure: no I/O).

A text line is ``TIMESTAMP EVENT key=value ...``. Values that contain spaces, quotes,
``=`` or anything unprintable are written as JSON strings, so every line splits
unambiguously on spaces and no byte from a peer reaches the log raw. Every value is
capped (``VALUE_LIMIT`` characters once escaped), so no value from a peer can make a
line long enough to interleave with another process's.

A JSON line (``--log-format json``) is one object with the same fields:
``{"ts": TIMESTAMP, "event": EVENT, "key": value, ...}``. Whole numbers and booleans
stay JSON numbers and booleans; every other value is the string the text line shows
(``"duration": "0.002s"``, ``"conns": "1/1000"``), so the two formats carry the same
information and a field means the same in both.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping

# A peer's bytes are shown at most this long in a log line.
PEER_BYTES_LIMIT = 64
# Every text value is shown in at most this many characters once escaped, whoever
# supplied it (a PROXY authority, a TLS alert, an address, an error message): a line of
# a dozen fields then stays under PIPE_BUF (4096 bytes), the size up to which writes
# to the shared stderr pipe are atomic (pipe(7)); longer lines from the parent and its
# children interleave. 512 holds a whole DNS name (253), or an error naming a path.
VALUE_LIMIT = 512
# Fields shown by their end, and how much of it: a handler's traceback (JSON logs)
# keeps its last frames and the error.
TAIL_LIMITS = {"traceback": 2048}


def format_timestamp(ts: float) -> str:
    """Format a Unix time as ISO 8601 UTC with milliseconds: ``2026-11-24T23:57:56.123Z``."""
    moment = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Stamper:
    """``format_timestamp`` for a stream of times, formatting each second only once.

    The forking parent logs two lines per connection; every object its logging
    touches is a page a child later keeps a copy of, so the hot path stays small.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ts: float) -> str:
        second = int(ts)
        micros = round((ts - second) * 1_000_000)  # as datetime rounds: half to even
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = format_timestamp(second)[:-4]  # without "000Z"
        return f"{self._prefix}{micros // 1000:03d}Z"


def escape_bytes(data: bytes, limit: int = PEER_BYTES_LIMIT) -> str:
    """Escape bytes from a peer for a log line: printable ASCII kept, the rest as ``\\xNN``.

    At most ``limit`` bytes are shown; a longer input ends with ``...(+N bytes)``.
    """
    shown = data[:limit].decode("ascii", "backslashreplace")
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown)
    if len(data) > limit:
        shown += f"...(+{len(data) - limit} bytes)"
    return shown


def escape_controls(text: str) -> str:
    """``text`` with every unprintable character but the newline escaped as Python
    writes it (``\\x1b``, ``\\u2028``): for a multi-line text such as a traceback,
    whose exception message may hold a peer's bytes."""
    if text.isprintable():
        return text
    return "".join(c if c == "\n" or c.isprintable() else ascii(c)[1:-1] for c in text)


def escaped_size(char: str) -> int:
    """How many characters ``char`` takes in a JSON string with ``ensure_ascii``
    (``"\\u0001"`` for a control character, a surrogate pair beyond the BMP)."""
    if " " <= char < "\x7f":
        return 2 if char in '"\\' else 1
    if char in "\n\r\t\b\f":
        return 2
    return 12 if ord(char) > 0xFFFF else 6


def clip(text: str, limit: int = VALUE_LIMIT, tail: bool = False) -> str:
    """``text``, or as much of it as takes at most ``limit`` characters once escaped,
    with how many characters were left out: ``abc...(+N chars)``, or with ``tail``
    the end, ``(+N chars)...xyz``."""
    if text.isascii() and text.isprintable() and len(text) * 2 <= limit:
        return text  # the common case, decided in C: at most 2 characters each
    order = reversed(text) if tail else iter(text)
    budget, kept = limit - 24, 0  # room for the note
    used = 0
    for char in order:
        used += escaped_size(char)
        if used > limit:
            break
        if used <= budget:
            kept += 1
    else:
        return text  # all of it fits
    cut = len(text) - kept
    if tail:
        return f"(+{cut} chars)...{text[len(text) - kept :]}"
    return f"{text[:kept]}...(+{cut} chars)"


def format_value(value: object, limit: int = VALUE_LIMIT, tail: bool = False) -> str:
    """Format one field value so that it contains no space and no control character,
    and shows at most ``limit`` characters of text (see ``clip``)."""
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is bytes:
        value = escape_bytes(value)  # type: ignore[arg-type]
    elif kind is float:
        return f"{value:.3f}"
    text = clip(str(value), limit, tail)
    if (
        text.isprintable()
        and text
        and " " not in text
        and '"' not in text
        and "=" not in text
        and "\\" not in text
    ):
        return text
    import json  # only for the rare value that needs quoting

    return json.dumps(text)


def render_text(
    ts: float, event: str, fields: Mapping[str, object], stamp: Callable[[float], str] | None = None
) -> str:
    """Render one event as a text line, without the trailing newline.

    ``stamp`` formats the time (a ``Stamper`` in a long-lived logger).
    """
    parts = [(stamp or format_timestamp)(ts), event]
    for key, value in fields.items():
        if key in TAIL_LIMITS:
            parts.append(f"{key}={format_value(value, TAIL_LIMITS[key], tail=True)}")
        else:
            parts.append(f"{key}={format_value(value)}")
    return " ".join(parts)


def json_value(value: object, limit: int = VALUE_LIMIT, tail: bool = False) -> object:
    """A field value as JSON carries it: numbers and booleans as such, the rest as text
    of at most ``limit`` characters once escaped (see ``clip``)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity: those go as text.
        return round(value, 3) if abs(value) < float("inf") else str(value)
    if isinstance(value, bytes):
        return escape_bytes(value)
    return clip(str(value), limit, tail)


def render_json(
    ts: float, event: str, fields: Mapping[str, object], stamp: Callable[[float], str] | None = None
) -> str:
    """Render one event as a JSON object on one line, without the trailing newline.

    ``ensure_ascii`` keeps the line 7-bit clean: whatever a value holds, the line has
    no control character and no raw byte from a peer.
    """
    import json  # only when JSON logs were chosen: the parent stays lean otherwise

    record: dict[str, object] = {"ts": (stamp or format_timestamp)(ts), "event": event}
    for key, value in fields.items():
        if key in TAIL_LIMITS:
            record[key] = json_value(value, TAIL_LIMITS[key], tail=True)
        else:
            record[key] = json_value(value)
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"))
