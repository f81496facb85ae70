"""Parsing of option values that need more than a type (pure: no I/O)."""

from __future__ import annotations

from forkserve._errors import UsageError
from forkserve.core.rules import HEX as HEX_DIGITS

# --banner escapes, as C, printf(1) and Python write them.
BANNER_ESCAPES = {
    "\\": b"\\",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "0": b"\0",
}


def parse_banner(text: str) -> bytes:
    """Turn ``--banner`` text into the bytes sent: escapes decoded, nothing added.

    ``\\n``, ``\\r``, ``\\t``, ``\\0``, ``\\\\`` and ``\\xHH`` (two hex digits) are
    decoded; every other character is sent as its UTF-8 encoding (undecodable bytes
    from the command line pass through unchanged). No newline is added: write
    ``\\r\\n`` where the protocol wants one, as with tcpserver's ``-B``.

    Raises:
        UsageError: a backslash not followed by one of those escapes.
    """
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out += char.encode("utf-8", "surrogateescape")
            i += 1
            continue
        code = text[i + 1 : i + 2]
        if code in BANNER_ESCAPES:
            out += BANNER_ESCAPES[code]
            i += 2
        elif code == "x" and len(text) >= i + 4 and set(text[i + 2 : i + 4]) <= HEX_DIGITS:
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            raise UsageError(bad_escape(text[i : i + 4 if code == "x" else i + 2]))
    return bytes(out)


def bad_escape(escape: str) -> str:
    """The error for one bad escape: the escape alone, as typed (a character that
    cannot be shown as it is, as ``\\xHH`` or ``\\uHHHH``). The caller names the
    option or key."""
    if escape == "\\":
        return "invalid escape: a \\ ends the text (write \\\\ for a backslash)"
    shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in escape)
    return f"invalid escape '{shown}': use \\n \\r \\t \\0 \\\\ or \\xHH"


def escape_banner(data: bytes) -> str:
    """The inverse of ``parse_banner``: text that parses back to ``data``."""
    parts = []
    for byte in data:
        char = chr(byte)
        if char == "\\":
            parts.append("\\\\")
        elif 32 <= byte < 127:
            parts.append(char)
        else:
            parts.append(f"\\x{byte:02x}")
    return "".join(parts)
