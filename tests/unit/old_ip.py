"""The address parsers forkserve used before ``ipaddress`` (issue 14, item 5), kept as
the oracle the property tests compare the ``ipaddress``-based ones with
(tests/unit/test_ip_oracle.py): old and new must agree on every input."""

from __future__ import annotations

from forkserve.core.rules import ALL_ONES, DIGITS, HEX, IPV6_BIT, MAPPED, UNIX_BIT, RuleError

ADDRESS_CHARS = HEX | frozenset(":./")


def parse_ipv4(text: str) -> int:
    """``a.b.c.d`` as a 32-bit int.

    Raises:
        RuleError: not four decimal numbers 0-255 without leading zeros.
    """
    parts = text.split(".")
    if len(parts) != 4:
        raise RuleError(f"invalid IPv4 address {text!r}")
    value = 0
    for part in parts:
        if not part or len(part) > 3 or not set(part) <= DIGITS or (part[0] == "0" != part):
            raise RuleError(f"invalid IPv4 address {text!r}")
        number = int(part)
        if number > 255:
            raise RuleError(f"invalid IPv4 address {text!r}")
        value = value << 8 | number
    return value


def _hex_groups(text: str, whole: str) -> list[int]:
    if not text:
        return []
    groups = []
    for group in text.split(":"):
        if not 1 <= len(group) <= 4 or not set(group) <= HEX:
            raise RuleError(f"invalid IPv6 address {whole!r}")
        groups.append(int(group, 16))
    return groups


def parse_ipv6(text: str) -> int:
    """An IPv6 address (RFC 4291 section 2.2 forms, dotted-quad tail too) as an int.

    Raises:
        RuleError: not an IPv6 address.
    """
    body, tail = text, []
    if "." in text:  # x:x:x:x:x:x:d.d.d.d
        body, colon, quad = text.rpartition(":")
        if not colon:
            raise RuleError(f"invalid IPv6 address {text!r}")
        ipv4 = parse_ipv4(quad)
        tail = [ipv4 >> 16, ipv4 & 0xFFFF]
        if body.endswith(":"):  # "...::d.d.d.d": the partition split the "::"
            body += ":"
    if body.count("::") > 1 or ":::" in body:
        raise RuleError(f"invalid IPv6 address {text!r}")
    if "::" in body:
        head_text, _, rest_text = body.partition("::")
        head, rest = _hex_groups(head_text, text), _hex_groups(rest_text, text) + tail
        if len(head) + len(rest) > 7:
            raise RuleError(f"invalid IPv6 address {text!r}")
        groups = head + [0] * (8 - len(head) - len(rest)) + rest
    else:
        groups = _hex_groups(body, text) + tail
        if len(groups) != 8:
            raise RuleError(f"invalid IPv6 address {text!r}")
    value = 0
    for group in groups:
        value = value << 16 | group
    return value


def parse_ip(text: str) -> int:
    """An IPv4 or IPv6 address as an int: IPv4 (and IPv4-mapped IPv6) as
    ``::ffff:a.b.c.d``, any other IPv6 address with IPV6_BIT set.

    A ``%zone`` suffix, as getpeername() reports for a link-local peer, is ignored.

    Raises:
        RuleError: not an IP address.
    """
    if ":" in text:
        address = parse_ipv6(text.partition("%")[0])
        return address if is_ipv4(address) else address | IPV6_BIT
    return MAPPED | parse_ipv4(text)


def is_ipv4(address: int) -> bool:
    """Whether an address from ``parse_ip`` is IPv4 (mapped)."""
    return address >> 32 == 0xFFFF


def prefix_mask(length: int) -> int:
    """The 128-bit mask of a prefix ``length`` bits long."""
    return ALL_ONES ^ ((1 << (128 - length)) - 1)


def family_mask(address: int, length: int) -> int:
    """The mask of a prefix of ``address`` (from parse_ip), ``length`` bits long in the
    128-bit space: with IPV6_BIT for an IPv6 address, so it matches IPv6 clients only."""
    return prefix_mask(length) | (address & IPV6_BIT) | UNIX_BIT


def parse_prefix(text: str) -> tuple[int, int]:
    """``ADDRESS[/LENGTH]`` as ``(network, mask)`` (see parse_ip and family_mask).

    IPv4 lengths are 0-32 (a /8 becomes a /104 of the mapped space), IPv6 0-128; no
    length means the single address. An IPv6 prefix matches IPv6 clients only, even
    ``::/0``; an IPv4-mapped one (``::ffff:10.0.0.0/104``) is an IPv4 prefix. Host
    bits must be zero, as ``ipaddress`` insists (``10.0.0.1/8`` is almost always a
    typing mistake in an access rule).

    Raises:
        RuleError: not an address or prefix.
    """
    if not text:
        raise RuleError("empty address")
    if not set(text) <= ADDRESS_CHARS:
        raise RuleError(f"invalid address {text!r}")
    address_text, slash, length_text = text.partition("/")
    address = parse_ip(address_text)
    bits = 128 if ":" in address_text else 32
    if slash:
        if not length_text or not set(length_text) <= DIGITS or len(length_text) > 3:
            raise RuleError(f"invalid prefix length in {text!r}")
        length = int(length_text)
        if length > bits:
            raise RuleError(f"prefix length {length} is over {bits} in {text!r}")
    else:
        length = bits
    if bits == 128 and is_ipv4(address) and length < 96:
        address |= IPV6_BIT  # wider than the mapped range: an IPv6 prefix
    mask = family_mask(address, length + 128 - bits)
    if address & ~mask:
        raise RuleError(f"{text!r} has bits set past its prefix length")
    return address, mask


def format_ip(packed: bytes) -> str:
    """4 or 16 bytes as text: a dotted quad, or RFC 5952's compressed IPv6 form
    (lowercase, the longest run of two or more zero groups as ``::``, the first
    of equal runs; IPv4-mapped addresses as ``::ffff:1.2.3.4``)."""
    if len(packed) == 4:
        return ".".join(str(b) for b in packed)
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return "::ffff:" + format_ip(packed[12:])
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]
    best, best_len, run_start = -1, 1, -1
    for i, word in enumerate([*words, 1]):
        if word == 0 and run_start < 0:
            run_start = i
        elif word != 0 and run_start >= 0:
            if i - run_start > best_len:
                best, best_len = run_start, i - run_start
            run_start = -1
    hexes = [f"{w:x}" for w in words]
    if best < 0:
        return ":".join(hexes)
    return ":".join(hexes[:best]) + "::" + ":".join(hexes[best + best_len :])
