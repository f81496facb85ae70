"""The PROXY protocol, versions 1 and 2, as HAProxy's doc/proxy-protocol.txt specifies (pure).

A load balancer that relays a TCP connection sends one header before the client's
bytes, naming the client's address (the source) and the address it connected to
(the destination). This module parses and builds those headers; it does no I/O
(sans-IO, like h11): ``ProxyReader`` is fed bytes and says how many more it may be
given without reading past the header, so the caller can leave the client's first
byte in the socket for an exec'd program.

Version 1 (section 2.1) is one US-ASCII line of at most 107 bytes with its CRLF::

    PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\\r\\n

Version 2 (section 2.2) is binary: a 12-byte signature, a version and command byte,
a family and transport byte, a 2-byte length, then that many bytes: the addresses
and TLVs (type, 2-byte length, value).

Decisions:
- ``LOCAL`` (v2) and ``UNKNOWN`` (v1) headers, v2 PROXY headers with an ``UNSPEC``
  family or transport, and v2 ``AF_UNIX`` families carry no usable TCP address:
  the header is accepted and the connection keeps its real endpoints
  (``ProxyHeader.source`` is None), as the specification says a receiver must
  (LOCAL) or should (UNSPEC, UNKNOWN). A LOCAL header's family byte is not even
  checked (section 2.2: it is "discarded"), and its length need not be 0: a
  balancer's health check is served like any connection from the balancer,
  whatever family it names.
- v2 PROXY headers with a DGRAM transport are refused (this is a stream server), as
  are unknown families and transports (section 2.2: "must be rejected").
- A v2 length above ``max_length`` (default 2,048) is refused before reading it.
- TLVs are checked to fill the block exactly (in a header whose addresses are
  ignored, TLVs that cannot be found are skipped instead); ``PP2_TYPE_AUTHORITY`` and
  ``PP2_TYPE_ALPN`` are exposed, the rest skipped. ``PP2_TYPE_CRC32C`` is not
  verified (a receiver may skip it: section 2.2).
"""

from __future__ import annotations

# The addresses' text is parsed and written by ipaddress (issue 14, item 5): this
# module is loaded only where the PROXY protocol is on, and there once, before the
# children are forked (child.edge.make_edge), so they share it.
import ipaddress

from forkserve._errors import ProxyProtocolError

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # "PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n"
V1_MIN = 15  # "PROXY UNKNOWN\r\n"
V2_FIXED = 16
DEFAULT_MAX_LENGTH = 2048
VERSIONS = ("v1", "v2", "any")

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02

# v2 family byte, high nibble: address family -> (name, address bytes each).
V2_FAMILIES = {0x0: ("UNSPEC", 0), 0x1: ("TCP4", 4), 0x2: ("TCP6", 16), 0x3: ("UNIX", 108)}


class ProxyHeader:
    """A parsed PROXY header.

    Attributes:
        version: 1 or 2.
        command: ``"PROXY"`` or ``"LOCAL"`` (v1 headers are always PROXY).
        family: ``"TCP4"``, ``"TCP6"``, ``"UNKNOWN"``, ``"UNSPEC"`` or ``"UNIX"``.
        source: the client's ``(host, port)``, or None: use the real peer.
        destination: the address the client connected to, or None.
        tlvs: v2's ``(type, value)`` pairs in order.
        length: the header's length in bytes.
    """

    __slots__ = ("command", "destination", "family", "length", "source", "tlvs", "version")

    def __init__(
        self,
        version: int,
        *,
        command: str,
        family: str,
        source: tuple[str, int] | None = None,
        destination: tuple[str, int] | None = None,
        tlvs: tuple[tuple[int, bytes], ...] = (),
        length: int = 0,
    ) -> None:
        self.version = version
        self.command = command
        self.family = family
        self.source = source
        self.destination = destination
        self.tlvs = tlvs
        self.length = length

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, or None."""
        return next((value for key, value in self.tlvs if key == kind), None)

    @property
    def authority(self) -> str | None:
        """PP2_TYPE_AUTHORITY: the host name the client asked for (TLS SNI), if sent."""
        value = self.tlv(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def alpn(self) -> bytes | None:
        """PP2_TYPE_ALPN: the application protocol negotiated, if sent."""
        return self.tlv(PP2_TYPE_ALPN)

    def __repr__(self) -> str:
        return (
            f"ProxyHeader(v{self.version} {self.command} {self.family} "
            f"{self.source!r} -> {self.destination!r}, {len(self.tlvs)} TLVs)"
        )


class ProxyReader:
    """Parse one PROXY header from bytes fed in any pieces.

    Use: while ``result`` is None, read at most ``wanted()`` bytes and ``feed`` them.
    ``wanted()`` never asks for a byte past the header, so a caller that honours it
    leaves the client's data in the socket; a caller that feeds more finds the excess
    in ``trailing``, untouched.

    Args:
        accept: ``"v1"``, ``"v2"`` or ``"any"``.
        max_length: the largest v2 address-and-TLV block accepted.
    """

    def __init__(self, accept: str = "any", max_length: int = DEFAULT_MAX_LENGTH) -> None:
        if accept not in VERSIONS:
            raise ValueError(f"accept must be one of {VERSIONS}, not {accept!r}")
        self.accept = accept
        self.max_length = max_length
        self.buffer = bytearray()
        self.result: ProxyHeader | None = None
        self.trailing = b""

    def wanted(self) -> int:
        """How many bytes may be read next without passing the header's end (0: done)."""
        buf = self.buffer
        if self.result is not None:
            return 0
        if not buf:
            return V2_FIXED if self.accept == "v2" else V1_MIN
        if buf[0] == SIGNATURE[0]:  # v2 (or garbage that feed will refuse)
            if len(buf) < V2_FIXED:
                return V2_FIXED - len(buf)
            return V2_FIXED + int.from_bytes(buf[14:16], "big") - len(buf)
        if len(buf) < V1_MIN:
            return V1_MIN - len(buf)
        return 1 if buf[-1] == 0x0D else 2  # the line still needs at least its CRLF

    def feed(self, data: bytes) -> ProxyHeader | None:
        """Add bytes; return the header once complete, else None.

        Raises:
            ProxyProtocolError: the bytes cannot begin a valid header (``reason`` says why).
        """
        if self.result is not None:
            self.trailing += data
            return self.result
        self.buffer += data
        header = self._parse()
        if header is not None:
            self.result = header
            self.trailing = bytes(self.buffer[header.length :])
            del self.buffer[:]
        return header

    def _parse(self) -> ProxyHeader | None:
        buf = bytes(self.buffer)
        if buf[:1] == SIGNATURE[:1] and self.accept != "v1":
            return parse_v2(buf, self.max_length)
        if buf[:1] == b"P" and self.accept != "v2":
            return parse_v1(buf)
        expected = {"v1": "a v1 'PROXY ' line", "v2": "the v2 signature"}.get(
            self.accept, "a PROXY header"
        )
        raise ProxyProtocolError("signature", f"expected {expected}, got {buf[:16]!r}")


def parse_v1(buf: bytes) -> ProxyHeader | None:
    """Parse a v1 line at the start of ``buf``; None while its CRLF has not arrived."""
    if not (buf.startswith(V1_PREFIX) or V1_PREFIX.startswith(buf[:6])):
        raise ProxyProtocolError("signature", f"not a v1 'PROXY ' line: {buf[:16]!r}")
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        bad = buf.find(b"\n", 0, V1_MAX)
        if bad >= 0:
            raise ProxyProtocolError("v1-line", "a lone LF ends the line (CRLF required)")
        if len(buf) >= V1_MAX:
            raise ProxyProtocolError("v1-too-long", f"no CRLF within {V1_MAX} bytes")
        return None
    line = buf[:end]
    if b"\r" in line:
        raise ProxyProtocolError("v1-line", "a lone CR inside the line")
    if not line.startswith(V1_PREFIX):
        raise ProxyProtocolError("signature", f"not a v1 'PROXY ' line: {buf[:16]!r}")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1-line", "bytes that are not US-ASCII") from None
    fields = text.split(" ")
    if fields[1] == "UNKNOWN":  # the rest of the line is ignored (section 2.1)
        return ProxyHeader(1, command="PROXY", family="UNKNOWN", length=end + 2)
    if fields[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("family", f"unknown v1 protocol {fields[1][:16]!r}")
    if len(fields) != 6:
        raise ProxyProtocolError("v1-line", f"expected 6 fields, got {len(fields)}")
    _, family, src, dst, sport, dport = fields
    parse_ip = parse_ipv4 if family == "TCP4" else parse_ipv6
    source = (format_ip(parse_ip(src)), parse_v1_port(sport))
    destination = (format_ip(parse_ip(dst)), parse_v1_port(dport))
    return ProxyHeader(
        1, command="PROXY", family=family, source=source, destination=destination, length=end + 2
    )


def parse_v1_port(text: str) -> int:
    """A v1 port: decimal, 0 to 65535, no leading zeros (section 2.1)."""
    if not text.isdigit() or not text.isascii() or (text[0] == "0" and text != "0"):
        raise ProxyProtocolError("address", f"invalid port {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError("address", f"port {port} out of range")
    return port


def parse_v2(buf: bytes, max_length: int = DEFAULT_MAX_LENGTH) -> ProxyHeader | None:
    """Parse a v2 header at the start of ``buf``; None while incomplete."""
    if not SIGNATURE.startswith(buf[:12]):
        raise ProxyProtocolError("signature", f"bad v2 signature {buf[:12]!r}")
    if len(buf) < V2_FIXED:
        if len(buf) > 12:
            check_version_command(buf[12])
        return None
    command = check_version_command(buf[12])
    length = int.from_bytes(buf[14:16], "big")
    if length > max_length:
        raise ProxyProtocolError("length", f"v2 length {length} is over {max_length}")
    family, size = v2_family(buf[13]) if command == "PROXY" else local_family(buf[13])
    if len(buf) < V2_FIXED + length:
        return None
    block = buf[V2_FIXED : V2_FIXED + length]
    source = destination = None
    if command == "LOCAL" or family == "UNSPEC":
        # Section 2.2: LOCAL "must" and an UNSPEC transport or family "should" have
        # its address information ignored; the connection keeps its real endpoints.
        tlvs = tlvs_if_any(block, size)
    else:
        addresses = address_size(size)
        if length < addresses:
            raise ProxyProtocolError(
                "length", f"v2 length {length} is short of {family}'s {addresses}"
            )
        tlvs = parse_tlvs(block[addresses:])
        if size in (4, 16):
            ports = block[2 * size : addresses]
            source = (format_ip(block[:size]), int.from_bytes(ports[:2], "big"))
            destination = (format_ip(block[size : 2 * size]), int.from_bytes(ports[2:], "big"))
    return ProxyHeader(
        2,
        command=command,
        family=family,
        source=source,
        destination=destination,
        tlvs=tlvs,
        length=V2_FIXED + length,
    )


def address_size(size: int) -> int:
    """The address block's length for addresses of ``size`` bytes: two addresses,
    and two ports for IPv4 and IPv6 (section 2.2)."""
    return 2 * size + (4 if size in (4, 16) else 0)


def local_family(byte: int) -> tuple[str, int]:
    """A LOCAL header's family: ignored (section 2.2: the receiver "must accept this
    connection as valid and must use the real connection endpoints and discard the
    protocol block including the family"), so never refused; named when it is valid."""
    try:
        return v2_family(byte)
    except ProxyProtocolError:
        return "UNSPEC", 0


def tlvs_if_any(block: bytes, size: int) -> tuple[tuple[int, bytes], ...]:
    """The TLVs of a header whose addresses are ignored, if they can be found: after
    an address block of the family's size, filling the rest exactly; else none. The
    TLVs are informational (the authority is logged), never a reason to refuse."""
    addresses = address_size(size)
    if len(block) < addresses:
        return ()
    try:
        return parse_tlvs(block[addresses:])
    except ProxyProtocolError:
        return ()


def check_version_command(byte: int) -> str:
    if byte >> 4 != 2:
        raise ProxyProtocolError("version", f"v2 version {byte >> 4} (expected 2)")
    if byte & 0xF > 1:
        raise ProxyProtocolError("command", f"v2 command {byte & 0xF} (expected 0 or 1)")
    return "LOCAL" if byte & 0xF == 0 else "PROXY"


def v2_family(byte: int) -> tuple[str, int]:
    """The family's name and its size of one address, from the 14th byte."""
    if byte >> 4 not in V2_FAMILIES:
        raise ProxyProtocolError("family", f"unknown v2 address family 0x{byte >> 4:x}")
    transport = byte & 0xF
    if transport > 2:
        raise ProxyProtocolError("family", f"unknown v2 transport 0x{transport:x}")
    if transport == 2:
        raise ProxyProtocolError("family", "a datagram (DGRAM) connection on a stream server")
    name, size = V2_FAMILIES[byte >> 4]
    if transport == 0:  # UNSPEC transport: the addresses are to be ignored
        return "UNSPEC", size
    return name, size


def parse_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """Split the TLV area; every TLV must fit, and they must fill it exactly."""
    tlvs = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyProtocolError("tlv", f"a truncated TLV at offset {offset}")
        kind, size = data[offset], int.from_bytes(data[offset + 1 : offset + 3], "big")
        value = data[offset + 3 : offset + 3 + size]
        if len(value) != size:
            raise ProxyProtocolError("tlv", f"TLV 0x{kind:02x} of {size} bytes overruns")
        tlvs.append((kind, value))
        offset += 3 + size
    return tuple(tlvs)


# -- addresses, by ipaddress -----------------------------------------------------------


def parse_ipv4(text: str) -> bytes:
    """Dotted quad to 4 bytes: exactly 4 decimal numbers 0-255, no leading zeros
    (``ipaddress``, as core.rules.parse_ip)."""
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        raise ProxyProtocolError("address", f"invalid IPv4 address {text[:40]!r}") from None


def parse_ipv6(text: str) -> bytes:
    """IPv6 text to 16 bytes: hex groups of 1-4 digits, at most one ``::``, and an
    optional dotted quad in the last 32 bits (``::ffff:1.2.3.4``); no zone
    (``ipaddress``, as core.rules.parse_ip)."""
    if "%" not in text:  # ipaddress takes a zone (RFC 4007); a header carries none
        try:
            return ipaddress.IPv6Address(text).packed
        except ValueError:
            pass  # refused below, as a zone is
    raise ProxyProtocolError("address", f"invalid IPv6 address {text[:40]!r}")


def format_ip(packed: bytes) -> str:
    """4 or 16 bytes as text: a dotted quad, or RFC 5952's compressed IPv6 form
    (lowercase, the longest run of two or more zero groups as ``::``, the first
    of equal runs: what ``ipaddress`` writes), IPv4-mapped addresses as
    ``::ffff:1.2.3.4`` (RFC 5952 section 5; ipaddress before Python 3.13 writes
    ``::ffff:102:304``)."""
    if len(packed) == 4:
        return str(ipaddress.IPv4Address(packed))
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return "::ffff:" + format_ip(packed[12:])
    return str(ipaddress.IPv6Address(packed))
