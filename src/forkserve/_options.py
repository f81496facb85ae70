"""``forkserve serve`` options for access control, limits, time limits and privileges.

Every value is checked by its argparse type, so a bad one is one line on stderr and
exit 100 before anything starts; the rules file is read and checked by
``access_options``, which reports the file, the line and the reason.
"""

from __future__ import annotations

import argparse

from forkserve._errors import UsageError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Callable

    from forkserve._rules import Rule


def rule_type(action: str) -> Callable[[str], Rule]:
    """The argparse type of ``--allow`` and ``--deny``: a prefix, parsed into a Rule."""

    def parse(text: str) -> Rule:
        from forkserve._rules import RuleError, command_line_rule

        try:
            return command_line_rule(action, text)
        except RuleError as exc:
            raise argparse.ArgumentTypeError(exc.reason) from None

    parse.__name__ = f"--{action} prefix"
    return parse


def rate_type(text: str) -> tuple[int, float]:
    from forkserve._limits import parse_rate

    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def prefix_length(text: str) -> int:
    if not text.isdigit() or not text.isascii() or int(text) > 128:
        raise argparse.ArgumentTypeError(f"expected a prefix length from 0 to 128, not {text!r}")
    return int(text)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected more than 0 seconds, not {text!r}")
    return value


def size_type(text: str) -> int:
    from forkserve._privileges import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_type(text: str) -> int:
    if not text.isdigit() or not text.isascii() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number, 1 or more, not {text!r}")
    return int(text)


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    from forkserve._cli import banner_bytes
    from forkserve._limits import DEFAULT_IPV6_PREFIX

    group = parser.add_argument_group(
        "access control and limits per client address",
        "Decided in the parent before fork: a refused client costs no process.",
    )
    for action in ("allow", "deny"):
        group.add_argument(
            f"--{action}",
            dest="cli_rules",
            action="append",
            type=rule_type(action),
            metavar="PREFIX",
            help=f"{action} clients in PREFIX (10.0.0.0/8, 192.0.2.7, 2001:db8::/32); "
            "repeatable; rules apply in order, the first match wins",
        )
    group.add_argument(
        "--rules",
        metavar="FILE",
        help="more rules, after the command line's: ADDRESS[/LEN]:allow[,NAME=VALUE]... "
        "or ADDRESS[/LEN]:deny, one a line (see the README)",
    )
    group.add_argument(
        "--default-policy",
        choices=("allow", "deny"),
        help="for clients no rule matches (default: deny if any rule allows, else allow)",
    )
    group.add_argument(
        "--per-ip",
        type=count_type,
        default=0,
        metavar="N",
        help="connections at once from one IPv4 address or IPv6 prefix",
    )
    group.add_argument(
        "--ipv6-prefix",
        type=prefix_length,
        default=DEFAULT_IPV6_PREFIX,
        metavar="LEN",
        help=f"IPv6 clients count per prefix this long (default {DEFAULT_IPV6_PREFIX})",
    )
    group.add_argument(
        "--rate",
        type=rate_type,
        metavar="N/SECONDS",
        help="new connections per address per period, e.g. 10/1 (a token bucket)",
    )
    group.add_argument(
        "--reject-message",
        type=banner_bytes,
        default=b"",
        metavar="TEXT",
        help="sent to a client refused by --per-ip or --rate; escapes as --banner",
    )


def add_time_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("time limits per connection")
    group.add_argument(
        "--idle-timeout",
        type=positive_seconds,
        default=0.0,
        metavar="SECONDS",
        help="Python handlers: a read or write that waits this long ends the connection (exit 124)",
    )
    group.add_argument(
        "--max-lifetime",
        type=positive_seconds,
        default=0.0,
        metavar="SECONDS",
        help="a connection's process group gets SIGTERM after this long, SIGKILL 1s later",
    )
    group.add_argument(
        "--handshake-timeout",
        type=positive_seconds,
        default=0.0,
        metavar="SECONDS",
        help="the client must send its first byte within this long (else exit 125); with "
        "--proxy-protocol or TLS, the time for the header and the handshake (default 10)",
    )


def add_privilege_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("privileges and resource limits")
    group.add_argument("--user", metavar="NAME", help="after binding, switch to this user")
    group.add_argument("--group", metavar="NAME", help="after binding, switch to this group")
    limits: list[tuple[str, Callable[[str], int], str]] = [
        ("nofile", count_type, "open descriptors per child (RLIMIT_NOFILE)"),
        ("as", size_type, "address space per child, e.g. 512M (RLIMIT_AS)"),
        ("cpu", count_type, "CPU seconds per connection; then SIGXCPU (RLIMIT_CPU)"),
        ("nproc", count_type, "processes of the user, counted per user (RLIMIT_NPROC)"),
    ]
    for name, kind, text in limits:
        metavar = "SIZE" if name == "as" else "SECONDS" if name == "cpu" else "N"
        group.add_argument(f"--limit-{name}", type=kind, metavar=metavar, help=text)


def read_rules_file(path: str) -> list[Rule]:
    """The rules of ``--rules FILE``.

    Raises:
        UsageError: unreadable, or a bad line (named with its number and reason).
    """
    from forkserve._rules import RuleError, parse_rules

    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise UsageError(f"cannot read rules file {path!r}: {exc.strerror}") from None
    try:
        return parse_rules(data, path)
    except RuleError as exc:
        raise UsageError(f"rules file {path!r}, line {exc.line}: {exc.reason}") from None


def access_options(args: argparse.Namespace) -> dict[str, object]:
    """The ``Server`` keyword arguments these options ask for.

    Raises:
        UsageError: a bad rules file.
    """
    from forkserve._rules import RuleSet, default_allows

    rules: list[Rule] = list(args.cli_rules or [])
    if args.rules is not None:
        rules += read_rules_file(args.rules)
    ruleset = None
    if rules or args.default_policy == "deny":
        ruleset = RuleSet(rules, default_allows(rules, args.default_policy))
    rlimits = {
        name: getattr(args, f"limit_{name}")
        for name in ("nofile", "as", "cpu", "nproc")
        if getattr(args, f"limit_{name}") is not None
    }
    return {
        "rules": ruleset,
        "per_ip": args.per_ip,
        "rate": args.rate,
        "ipv6_prefix": args.ipv6_prefix,
        "reject_message": args.reject_message,
        "idle_timeout": args.idle_timeout,
        "max_lifetime": args.max_lifetime,
        "handshake_timeout": args.handshake_timeout,
        "user": args.user,
        "group": args.group,
        "rlimits": rlimits,
    }
