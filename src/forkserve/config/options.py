"""``forkserve serve``'s configuration: the parser from the table, ``--config``, reloads.

Values come from three places, the later winning: each setting's default, the TOML
file of ``--config``, the command line. The command line is parsed once; the file is
read at start-up and again at each SIGHUP (``Reloader``), and the result is checked
as a whole (a reload that fails any check changes nothing).
"""

from __future__ import annotations

import argparse

from forkserve._errors import UsageError
from forkserve._log import DEBUG, INFO, QUIET
from forkserve.config.defaults import (
    DEFAULT_MAX_CONNS,
    DEFAULT_MAX_SPARE,
    DEFAULT_MAX_WORKERS,
    DEFAULT_MIN_SPARE,
)
from forkserve.config.settings import UPGRADE, Setting, changes, validate_table
from forkserve.config.table import EXCLUSIVE, GROUP_TEXT, RLIMITS, SERVE, SERVE_BY_KEY
from forkserve.config.values import Settings
from forkserve.core.names import POOL_SETTINGS

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from forkserve.child.exec import Program
    from forkserve.child.handler import Handler
    from forkserve.core.rules import Rule


def argument_type(setting: Setting) -> Callable[[str], object]:
    """The argparse ``type`` of a setting: its Kind's parser, with argparse's error."""

    def parse(text: str) -> object:
        try:
            return setting.kind.from_text(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = setting.key
    return parse


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """``forkserve serve``'s options, from the table. Nothing has a default here: an
    option not given is absent, so that the config file's value stands."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="read settings from this TOML file (keys as the long options, without "
        "dashes: max-conns = 100); the command line overrides it; SIGHUP re-reads it",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    exclusive = {key: pair for pair in EXCLUSIVE for key in pair}
    together: dict[tuple[str, ...], argparse._MutuallyExclusiveGroup] = {}
    for setting in SERVE:
        if setting.cli == "program":
            continue  # everything after '--' (see cli.main.split_program)
        group = groups.get(setting.group) or parser.add_argument_group(
            setting.group, GROUP_TEXT.get(setting.group)
        )
        groups[setting.group] = group
        if setting.key in exclusive:
            pair = exclusive[setting.key]
            together.setdefault(pair, group.add_mutually_exclusive_group())
            add_argument(together[pair], setting)
        else:
            add_argument(group, setting)


def add_argument(group: argparse._ActionsContainer, setting: Setting) -> None:
    default = setting.default_text or setting.default
    shown = "" if setting.default in (None, False, b"") and not setting.default_text else default
    text = setting.help + (f" (default {shown})" if shown not in ("", "none", "required") else "")
    if setting.mode:
        text = f"{setting.mode} mode: {text}"
    if setting.cli == "positional":
        group.add_argument(
            setting.dest,
            nargs="?",
            type=argument_type(setting),
            metavar=setting.metavar,
            default=None,  # not SUPPRESS: argparse would parse it as a value
            help=text,
        )
        return
    flags = [f"--{setting.key}", *([setting.short] if setting.short else [])]
    if setting.cli == "append":  # repeatable: a list, as in a file
        group.add_argument(
            *flags,
            dest=setting.dest,
            action="append",
            metavar=setting.metavar,
            default=argparse.SUPPRESS,
            help=text,
        )
        return
    if setting.cli == "rule":  # --allow and --deny, kept in their command-line order
        group.add_argument(
            *flags,
            dest="cli_rules",
            action="append",
            type=argument_type(setting),
            metavar=setting.metavar,
            default=argparse.SUPPRESS,
            help=text,
        )
        return
    if setting.kind.choices:
        kwargs: dict[str, Any] = {"choices": setting.kind.choices}
    elif setting.metavar:
        kwargs = {"type": argument_type(setting), "metavar": setting.metavar}
    else:
        kwargs = {"action": "store_true"}
    group.add_argument(*flags, dest=setting.dest, default=argparse.SUPPRESS, help=text, **kwargs)


def read_config(path: str) -> dict[str, object]:
    """The checked values of a TOML config file: ``{dest: value}``.

    Raises:
        UsageError: unreadable, not TOML, an unknown key or a bad value (exit 100).
    """
    import tomllib  # only when a config file is used

    try:
        with open(path, "rb") as file:  # noqa: PTH123 - no pathlib in the parent
            table = tomllib.load(file)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path!r} is not valid TOML: {exc}") from None
    values = validate_table(table, SERVE_BY_KEY, f"config file {path!r}")
    for first, second in EXCLUSIVE:
        if values.get(first) and values.get(second):
            raise UsageError(f"config file {path!r}: {first} and {second} exclude each other")
    return values


class Configuration:
    """The command line's values, and the file to merge under them.

    Args:
        given: the options the command line gave, ``{dest: value}``.
        path: the ``--config`` file, or None.
    """

    def __init__(self, given: Mapping[str, object], path: str | None) -> None:
        self.given = dict(given)
        self.path = path

    def resolve(self) -> dict[str, object]:
        """Defaults, then the file, then the command line: every setting's value.

        Raises:
            UsageError: a bad file, or values that contradict each other.
        """
        values = {setting.dest: setting.default for setting in SERVE}
        if self.path is not None:
            values.update(read_config(self.path))
        for first, second in EXCLUSIVE:  # -v on the command line beats quiet = true
            if self.given.get(first):
                values[second] = False
            if self.given.get(second):
                values[first] = False
        values.update(self.given)
        mode_options(values)  # checks the mode's options
        return values


def mode_options(values: Mapping[str, object]) -> dict[str, int]:
    """The limits of the chosen mode, with its defaults, checked against it.

    Raises:
        UsageError: an option of the other mode was given.
    """
    given = [name for name in POOL_SETTINGS if values.get(name) is not None]
    if values["mode"] == "fork":
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"{flag} needs --mode prefork")
        return {"max_conns": count(values, "max_conns") or DEFAULT_MAX_CONNS}
    if values["max_conns"] is not None:
        raise UsageError("--max-conns is fork mode's limit; in prefork mode use --max-workers")
    numbers = {name: count(values, name) for name in POOL_SETTINGS}
    max_workers = numbers["max_workers"] or DEFAULT_MAX_WORKERS
    min_spare = numbers["min_spare"] or min(DEFAULT_MIN_SPARE, max_workers)
    max_spare = numbers["max_spare"] or min(max(DEFAULT_MAX_SPARE, min_spare), max_workers)
    return {
        "min_spare": min_spare,
        "max_spare": max_spare,
        "max_workers": max_workers,
        "max_requests": numbers["max_requests"],
    }


def count(values: Mapping[str, object], name: str) -> int:
    """A whole-number setting, 0 when not set."""
    value = values[name]
    assert value is None or isinstance(value, int)
    return value or 0


def listed(values: Mapping[str, object], name: str) -> list[object]:
    """A list setting, empty when not set."""
    value = values[name]
    assert value is None or isinstance(value, list)
    return value or []


def access_arguments(values: Mapping[str, object]) -> dict[str, object]:
    """The settings (``Settings`` attributes) for access control, time limits and privileges.

    Rules: the command line's ``--allow``/``--deny`` in their order (or, without
    them, the file's ``deny`` then ``allow`` lists), then the rules file's.

    Raises:
        UsageError: a bad rules file (named with its line and the reason).
    """
    from forkserve.core.rules import RuleSet, default_allows

    given = values.get("cli_rules")
    if given is None:
        given = [*listed(values, "deny"), *listed(values, "allow")]
    assert isinstance(given, list)
    rules = list(given)
    if values["rules"] is not None:
        rules += read_rules_file(str(values["rules"]))
    ruleset = None
    policy = values["default_policy"]
    assert policy is None or isinstance(policy, str)
    if rules or policy == "deny":
        ruleset = RuleSet(rules, default_allows(rules, policy))
    rlimits = {name: values[f"limit_{name}"] for name in RLIMITS}
    names = (
        "per_ip",
        "rate",
        "ipv6_prefix",
        "reject_message",
        "idle_timeout",
        "max_lifetime",
        "handshake_timeout",
        "user",
        "group",
    )
    rlimits = {name: value for name, value in rlimits.items() if value is not None}
    return {"rules": ruleset, "rlimits": rlimits or None, **{name: values[name] for name in names}}


def read_rules_file(path: str) -> list[Rule]:
    """The rules of ``--rules FILE``.

    Raises:
        UsageError: unreadable, or a bad line (named with its number and reason).
    """
    from forkserve.core.rules import RuleError, parse_rules

    try:
        with open(path, "rb") as file:  # noqa: PTH123 - no pathlib in the parent
            data = file.read()
    except OSError as exc:
        raise UsageError(f"cannot read rules file {path!r}: {exc.strerror}") from None
    try:
        return parse_rules(data, path)
    except RuleError as exc:
        raise UsageError(f"rules file {path!r}, line {exc.line}: {exc.reason}") from None


def edge_arguments(values: Mapping[str, object]) -> dict[str, object]:
    """The settings (``Settings`` attributes) for the PROXY protocol and TLS."""
    return {
        "proxy_protocol": values["proxy_protocol"] or "",
        "proxy_from": tuple(listed(values, "proxy_from")),
        "tls_cert": values["tls_cert"],
        "tls_key": values["tls_key"],
        "tls_client_ca": values["tls_client_ca"],
    }


def log_level(values: Mapping[str, object]) -> int:
    return QUIET if values["quiet"] else DEBUG if values["verbose"] else INFO


def server_settings(values: Mapping[str, object]) -> Settings:
    """The typed settings of resolved values (see config.values.FOLDED for the
    table's rows that are not an attribute of their own).

    The values' types are their Kinds' (config.settings), which parsed and checked
    every one of them; tests/unit/test_settings.py checks the result's types
    against Settings' annotations.

    Raises:
        UsageError: a bad rules file, or an option of the other mode.
    """
    same = (
        *("mode", "backlog", "grace", "upgrade_timeout", "banner", "metrics", "log_format"),
        *("socket_mode", "socket_user", "socket_group"),
    )
    settings = Settings(log_level=log_level(values))
    settings.update({name: values[name] for name in same})
    settings.update(mode_options(values))
    settings.update(access_arguments(values))
    settings.update(edge_arguments(values))
    return settings


def choose_service(values: Mapping[str, object]) -> Handler | Program | str:
    """The handler, handler name or Program the settings ask for.

    Raises:
        UsageError: settings that contradict each other.
    """
    from forkserve.child.exec import Program

    program, local_host = values["program"], values["local_host"]
    assert local_host is None or isinstance(local_host, str)
    if program:
        if values["handler"] is not None:
            raise UsageError("--handler and '-- PROGRAM' cannot be used together")
        argv = [str(arg) for arg in listed(values, "program")]
        return Program(argv, lookup_hosts=bool(values["reverse_lookup"]), local_host=local_host)
    for flag, value in (
        ("--reverse-lookup", values["reverse_lookup"]),
        ("--local-host", local_host),
    ):
        if value:
            raise UsageError(f"{flag} sets UCSPI variables: it needs '-- PROGRAM'")
    if values["handler"] is not None:
        return str(values["handler"])
    from forkserve.child.handler import echo

    return echo


class Reloader:
    """SIGHUP: read the file again and say what changes (``Server`` applies it).

    Args:
        configuration: the command line and the file.
        values: the values in force.
    """

    def __init__(self, configuration: Configuration, values: Mapping[str, object]) -> None:
        self.configuration = configuration
        self.values = dict(values)
        self.rules_data = rules_data(values)

    def __call__(self) -> tuple[Settings, list[str], list[str]]:
        """Returns ``(settings, keys changed, keys needing an upgrade)``; what needs
        an upgrade keeps its running value in ``settings``.

        Raises:
            UsageError: the new configuration is invalid; nothing changes.
        """
        new = self.configuration.resolve()
        choose_service(new)  # the same checks as at start-up
        apply, upgrade = changes(self.values, new, SERVE)
        for setting in SERVE:  # what needs an upgrade stays as it is
            if setting.reload == UPGRADE:
                new[setting.dest] = self.values[setting.dest]
        result = server_settings(new)  # checked again with what stays
        self.values = new
        changed = [key.replace("_", "-") for key in apply]
        data = rules_data(new)
        if data != self.rules_data and "rules" not in changed:
            changed.append("rules")  # the same file, with new rules in it
        self.rules_data = data
        return result, changed, upgrade


def rules_data(values: Mapping[str, object]) -> bytes | None:
    """The rules file's content, to tell whether a reload changed it."""
    path = values.get("rules")
    if path is None:
        return None
    try:
        with open(str(path), "rb") as file:  # noqa: PTH123 - no pathlib in the parent
            return file.read()
    except OSError:
        return None  # read_rules_file reports it
