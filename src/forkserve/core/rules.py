"""Access rules: which client addresses may connect, and what each one's program sees
(pure: no I/O).

A rule set is a list of rules tried in order; the first whose prefix contains the
client's address decides (allow or deny), and an allow rule may set environment
variables for that connection's program or handler, like tcpserver's ``-x`` rules
(tcprules(1)). When no rule matches, the default policy decides.

Addresses are plain ints: an IPv4 address is stored as its IPv4-mapped IPv6 address
(``::ffff:a.b.c.d``, RFC 4291 section 2.5.5.2), so a client of a dual-stack listener,
which the kernel reports in mapped form, matches the IPv4 rules without a special case;
every other IPv6 address also has bit 128 set (IPV6_BIT), so an IPv6 prefix such as
``::/0`` never matches an IPv4 client. Matching is one AND and one comparison: 2-3x
faster than ``address in network`` on ``ipaddress`` objects (benchmarks/admission_cost.py,
docs/performance.md). Addresses are parsed by ``ipaddress`` (no leading zeros in IPv4;
no zone in a rule), imported on first use: the supervisor, which no longer forks
connections, can afford it, and the forker and its children load it only when they
parse addresses (the PROXY protocol). Until issue 14 the parsers were our own, to keep
``ipaddress`` out of the forking parent; tests/unit/test_ip_oracle.py holds them as
the oracle the property tests compare with.

A client of a Unix-domain socket has no address: its credentials (SO_PEERCRED) stand
for it, as ``UNIX_BIT | uid << 32 | gid`` (``unix_address``), so that a ``uid:N`` rule
masks the uid and a ``gid:N`` rule the gid, still one AND and one comparison. Every IP
rule's mask holds UNIX_BIT (which its network has clear), so an IP rule never matches
a Unix client, nor a uid/gid rule an IP client.

The rules file, one rule per line (see the README for examples)::

    # a comment; blank lines are ignored
    ADDRESS[/LENGTH]:allow[,NAME=VALUE][,NAME="VALUE"]...
    ADDRESS[/LENGTH]:deny
    uid:UID:allow|deny         (a Unix socket's client by its uid; gid:GID by its gid)
    :deny                      (no address: every client)
"""

from __future__ import annotations

# ::ffff:0:0/96: where IPv4 addresses live in the 128-bit space.
MAPPED = 0xFFFF << 32
ALL_ONES = (1 << 128) - 1
# Set in every address that is IPv6 and not IPv4-mapped, and in the masks of IPv6 rules.
IPV6_BIT = 1 << 128
# Set in every Unix-domain client's address (see the module's docstring).
UNIX_BIT = 1 << 129
ID_MASK = (1 << 32) - 1
UID_MASK = UNIX_BIT | ID_MASK << 32
GID_MASK = UNIX_BIT | ID_MASK
HEX = frozenset("0123456789abcdefABCDEF")
DIGITS = frozenset("0123456789")
ADDRESS_CHARS = HEX | frozenset(":./")
NAME_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
NAME_CHARS = NAME_FIRST | DIGITS


class RuleError(ValueError):
    """A rule that does not parse; ``line`` is its line number (0 off a file)."""

    def __init__(self, reason: str, line: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def parse_ip(text: str) -> int:
    """An IPv4 or IPv6 address as an int: IPv4 (and IPv4-mapped IPv6) as
    ``::ffff:a.b.c.d``, any other IPv6 address with IPV6_BIT set.

    A ``%zone`` suffix, as getpeername() reports for a link-local peer, is ignored.
    Parsed by ``ipaddress`` (RFC 4291 section 2.2 forms; IPv4 as four decimal numbers
    0-255 without leading zeros); imported on first use, so a process that never
    parses an address (the forker without PROXY) never loads it.

    Raises:
        RuleError: not an IP address.
    """
    import ipaddress

    if ":" in text:
        body = text.partition("%")[0]
        try:
            address = int(ipaddress.IPv6Address(body))
        except ValueError:
            raise RuleError(ipv6_error(body)) from None
        return address if is_ipv4(address) else address | IPV6_BIT
    try:
        return MAPPED | int(ipaddress.IPv4Address(text))
    except ValueError:
        raise RuleError(f"invalid IPv4 address {text!r}") from None


def ipv6_error(text: str) -> str:
    """Why ``text`` is no IPv6 address: its dotted-quad tail (what follows the last
    colon of an address with a dot), when that is what is wrong (``::1.2.3``), else
    the whole."""
    import ipaddress

    _, colon, quad = text.rpartition(":")
    if colon and "." in text:
        try:
            ipaddress.IPv4Address(quad)
        except ValueError:
            return f"invalid IPv4 address {quad!r}"
    return f"invalid IPv6 address {text!r}"


def unix_address(uid: int, gid: int) -> int:
    """A Unix-domain client's address: its uid and gid (see the module's docstring)."""
    return UNIX_BIT | uid << 32 | gid


def parse_peer(text: str) -> int:
    """``parse_ip``, or a Unix client's credentials as the logs write them
    (``pid:4242,uid:1000,gid:100``, core.address.format_credentials).

    Raises:
        RuleError: neither.
    """
    if not text.startswith("pid:"):
        return parse_ip(text)
    fields = dict(part.partition(":")[::2] for part in text.split(","))
    uid, gid = fields.get("uid", ""), fields.get("gid", "")
    if not (uid + gid).isascii() or not uid.isdigit() or not gid.isdigit():
        raise RuleError(f"invalid Unix peer {text!r}")
    return unix_address(int(uid) & ID_MASK, int(gid) & ID_MASK)


def parse_match(text: str) -> tuple[int, int]:
    """What a rule matches, as ``(network, mask)``: ``uid:N`` or ``gid:N`` (a Unix
    socket's clients), else an IP prefix (see parse_prefix).

    Raises:
        RuleError: none of these.
    """
    kind, colon, number = text.partition(":")
    if kind not in ("uid", "gid") or not colon:
        return parse_prefix(text)
    if not number.isascii() or not number.isdigit() or int(number) > ID_MASK:
        raise RuleError(f"invalid {kind} {number!r} in {text!r}: expected a number")
    if kind == "uid":
        return unix_address(int(number), 0), UID_MASK
    return unix_address(0, int(number)), GID_MASK


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


class Rule:
    """One rule: clients whose address ``& mask == network`` are allowed or denied.

    Attributes:
        label: how logs name the rule: ``FILE:LINE``, ``--deny=PREFIX``, ``default``.
        env: variables set for an allowed connection's program or handler.
    """

    __slots__ = ("allow", "env", "label", "mask", "network")

    def __init__(
        self,
        network: int,
        mask: int,
        allow: bool,
        label: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.network = network
        self.mask = mask
        self.allow = allow
        self.label = label
        self.env = env if env is not None else {}

    def __repr__(self) -> str:
        action = "allow" if self.allow else "deny"
        return f"Rule({self.label!r}, {action}, env={self.env!r})"


class RuleSet:
    """Rules in order, and what happens when none matches.

    Args:
        rules: tried first to last; the first match decides.
        default_allow: the decision when no rule matches.
    """

    __slots__ = ("default", "rules")

    def __init__(self, rules: list[Rule], default_allow: bool) -> None:
        self.rules = rules
        self.default = Rule(0, 0, default_allow, "default")

    def match(self, address: int) -> Rule:
        """The rule deciding for ``address`` (from ``parse_ip``): the first that
        contains it, else the default."""
        for rule in self.rules:
            if address & rule.mask == rule.network:
                return rule
        return self.default


def command_line_rule(action: str, text: str) -> Rule:
    """The rule of ``--allow PREFIX`` or ``--deny PREFIX`` (or ``uid:N``, ``gid:N``).

    Raises:
        RuleError: not an address or prefix.
    """
    network, mask = parse_match(text.strip())
    return Rule(network, mask, action == "allow", f"--{action}={text.strip()}")


def parse_rule_line(line: str, label: str) -> Rule | None:
    """One line of a rules file: a Rule, or None for a blank line or a comment.

    Raises:
        RuleError: the line is not a rule (without a line number: the caller adds it).
    """
    line = line.strip(" \t\r\n")
    if not line or line.startswith("#"):
        return None
    found = [(at, action) for action in ("allow", "deny") if (at := find_action(line, action)) >= 0]
    if not found:
        raise RuleError("expected ADDRESS:allow or ADDRESS:deny, then ,NAME=VALUE ...")
    at, action = min(found)
    end = at + 1 + len(action)
    prefix_text, rest = line[:at], line[end:]
    network, mask = parse_match(prefix_text) if prefix_text else (0, 0)
    env = parse_env(rest)
    if env and action == "deny":
        raise RuleError("a deny rule sets no variables: nothing runs for that client")
    return Rule(network, mask, action == "allow", label, env)


def find_action(line: str, action: str) -> int:
    """Where ``:action`` first ends a rule's head (followed by ``,`` or the end), or -1."""
    marker = f":{action}"
    at = line.find(marker)
    while at >= 0 and line[at + len(marker) : at + len(marker) + 1] not in ("", ","):
        at = line.find(marker, at + 1)
    return at


def parse_env(text: str) -> dict[str, str]:
    """``,NAME=VALUE,NAME="VALUE"...`` after a rule's action.

    A quoted value runs to the next ``"`` and may hold commas; an unquoted one runs to
    the next comma. Values cannot contain ``"`` (quoted) or ``,`` (unquoted), nor NUL.

    Raises:
        RuleError: malformed, a bad name, or a name set twice.
    """
    env: dict[str, str] = {}
    i = 0
    while i < len(text):
        assert text[i] == ","
        eq = text.find("=", i + 1)
        if eq < 0:
            raise RuleError(f"expected NAME=VALUE after ',' in {text[i:]!r}")
        name = text[i + 1 : eq]
        if not name or name[0] not in NAME_FIRST or not set(name) <= NAME_CHARS:
            raise RuleError(f"invalid variable name {name!r}")
        if text[eq + 1 : eq + 2] == '"':
            close = text.find('"', eq + 2)
            if close < 0:
                raise RuleError(f"no closing quote in {text[eq + 1 :]!r}")
            value, i = text[eq + 2 : close], close + 1
            if i < len(text) and text[i] != ",":
                raise RuleError(f"expected ',' after the quoted value of {name}")
        else:
            comma = text.find(",", eq + 1)
            i = len(text) if comma < 0 else comma
            value = text[eq + 1 : i]
            if '"' in value:
                raise RuleError(f"unbalanced quote in the value of {name}")
        if "\0" in value:
            raise RuleError(f"NUL in the value of {name}")
        if name in env:
            raise RuleError(f"{name} set twice")
        env[name] = value
    return env


def parse_rules(data: bytes, origin: str) -> list[Rule]:
    """Every rule of a rules file, in order.

    Args:
        data: the file's contents (UTF-8).
        origin: the file's name, for rule labels (``origin:LINE``).

    Raises:
        RuleError: the first bad line, with its number in ``line``.
    """
    rules = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RuleError("not UTF-8", number) from None
        try:
            rule = parse_rule_line(line, f"{origin}:{number}")
        except RuleError as exc:
            raise RuleError(exc.reason, number) from None
        if rule is not None:
            rules.append(rule)
    return rules


def default_allows(rules: list[Rule], policy: str | None) -> bool:
    """The default decision: ``policy`` if given ("allow" or "deny"), else deny when
    any rule allows (an allow list, as xinetd's only_from), allow otherwise (a deny
    list, as tcpserver without a matching rule)."""
    if policy is not None:
        return policy == "allow"
    return not any(rule.allow for rule in rules)
