"""The PROXY protocol's addresses outside the parser (pure): the headers a client
sends (``forkserve client`` and ``bench``, and the tests), and the trusted networks of
``--proxy-from``. The parser and the address formats are in core.proxy.
"""

from __future__ import annotations

from forkserve._errors import ProxyProtocolError
from forkserve.core.proxy import SIGNATURE, format_ip, parse_ipv4, parse_ipv6


def pack_ip(host: str) -> bytes:
    """Text to 4 or 16 bytes; an IPv6 zone (``%eth0``) is dropped."""
    host = host.partition("%")[0]
    return parse_ipv6(host) if ":" in host else parse_ipv4(host)


# -- building headers (forkserve client and bench send them) -------------------------


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 line for a TCP connection from ``source`` to ``destination``;
    ``PROXY UNKNOWN`` when either is None."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = pack_ip(source[0]), pack_ip(destination[0])
    if len(src) != len(dst):  # one side mapped IPv4: write both as IPv6
        src, dst = as_ipv6(src), as_ipv6(dst)
    family = "TCP4" if len(src) == 4 else "TCP6"
    text = f"PROXY {family} {format_ip(src)} {format_ip(dst)} {source[1]} {destination[1]}\r\n"
    return text.encode("ascii")


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """A v2 header: PROXY over TCP from ``source`` to ``destination``, or LOCAL (no
    address) when either is None; ``tlvs`` are appended in order."""
    tail = b"".join(bytes([k]) + len(v).to_bytes(2, "big") + v for k, v in tlvs)
    if source is None or destination is None:
        return SIGNATURE + b"\x20\x00" + len(tail).to_bytes(2, "big") + tail
    src, dst = pack_ip(source[0]), pack_ip(destination[0])
    if len(src) != len(dst):
        src, dst = as_ipv6(src), as_ipv6(dst)
    family = 0x11 if len(src) == 4 else 0x21
    block = src + dst + source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big") + tail
    return SIGNATURE + bytes([0x21, family]) + len(block).to_bytes(2, "big") + block


def as_ipv6(packed: bytes) -> bytes:
    return packed if len(packed) == 16 else b"\0" * 10 + b"\xff\xff" + packed


# -- trusted sources (--proxy-from) ----------------------------------------------------


def parse_network(text: str) -> tuple[bytes, int]:
    """``ADDRESS[/PREFIX]`` to ``(packed address, prefix length)``, IPv4 mapped into
    IPv6 (so ``127.0.0.1/8`` also matches ``::ffff:127.0.0.5``).

    Raises:
        ProxyProtocolError: not an address or a prefix in range.
    """
    host, slash, prefix_text = text.partition("/")
    packed = pack_ip(host)
    bits = len(packed) * 8
    if slash:
        if not (prefix_text.isascii() and prefix_text.isdigit()) or int(prefix_text) > bits:
            raise ProxyProtocolError("address", f"invalid prefix length in {text!r}")
        prefix = int(prefix_text)
    else:
        prefix = bits
    if len(packed) == 4:
        packed, prefix = as_ipv6(packed), prefix + 96
    return packed, prefix


def in_networks(host: str, networks: tuple[tuple[bytes, int], ...]) -> bool:
    """Whether ``host`` (text, as getpeername gives it) is in any of ``networks``."""
    try:
        value = int.from_bytes(as_ipv6(pack_ip(host)), "big")
    except ProxyProtocolError:
        return False  # e.g. a Unix socket's peer
    for packed, prefix in networks:
        shift = 128 - prefix
        if value >> shift == int.from_bytes(packed, "big") >> shift:
            return True
    return False
