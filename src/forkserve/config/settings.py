"""Every setting of ``forkserve serve``, declared once (pure: no I/O).

One table feeds the argparse parser (flags, types, help), the validation of a TOML
``--config`` file (keys, types, ranges), SIGHUP reloads (which settings apply to new
connections, which need an upgrade) and the documentation (``docs/options.md`` is
generated from it, and a test checks it is current).

A setting's TOML key is its long option without the dashes in front: ``--max-conns``
is ``max-conns``. Values from the command line override the file's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from forkserve._errors import ForkserveError, UsageError
from forkserve.core.address import parse_listen, parse_listen_address
from forkserve.core.escapes import parse_banner
from forkserve.core.gate import MAX_SECONDS, MAX_SECONDS_TEXT, parse_rate
from forkserve.core.units import file_mode, parse_file_mode

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from forkserve.core.rules import Rule

# How a setting takes effect at SIGHUP.
RELOAD = "reload"  # re-read and applied to new connections
UPGRADE = "upgrade"  # needs a new process: SIGUSR2 (a reload logs it and keeps the old value)


class Kind:
    """A type of value: how it is parsed from the command line and checked in TOML.

    Args:
        name: what the docs call it.
        from_text: parses a command-line string; raises ValueError with the reason.
        toml_types: the TOML (Python) types accepted in a config file.
        from_value: checks and converts a TOML value (after the type check);
            raises ValueError with the reason. By default ``from_text(str(value))``
            for strings, the value itself otherwise.
    """

    __slots__ = ("choices", "from_text", "from_value", "name", "toml_types")

    def __init__(
        self,
        name: str,
        from_text: Callable[[str], object],
        toml_types: tuple[type, ...],
        from_value: Callable[[object], object] | None = None,
    ) -> None:
        self.name = name
        self.from_text = from_text
        self.toml_types = toml_types
        self.from_value = from_value
        self.choices: tuple[str, ...] = ()

    def check(self, value: object) -> object:
        """A TOML value, checked. Raises ValueError with the reason."""
        # ValueError, not TypeError: either way it is the value that is wrong.
        if isinstance(value, bool) and bool not in self.toml_types:
            raise ValueError(f"expected {self.name}, not a boolean")
        if not isinstance(value, self.toml_types):
            raise ValueError(f"expected {self.name}, not {type(value).__name__}")  # noqa: TRY004
        if self.from_value is not None:
            return self.from_value(value)
        return self.from_text(value) if isinstance(value, str) else value


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"expected a whole number, 1 or more, not {text!r}")
    return _at_least_one(int(text))


def _at_least_one(value: object) -> int:
    assert isinstance(value, int)
    if value < 1:
        raise ValueError(f"expected 1 or more, not {value}")
    return value


def _float_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected seconds, not {text!r}") from None


def _seconds(text: str) -> float:
    return _nonnegative(_float_seconds(text))


def _nonnegative(value: object) -> float:
    assert isinstance(value, int | float)
    if not 0 <= value < float("inf"):
        raise ValueError(f"expected 0 or more seconds, not {value!r}")
    return _bounded(value)


def _bounded(value: int | float) -> float:
    """A duration no longer than MAX_SECONDS (see core.gate). Raises ValueError."""
    if value > MAX_SECONDS:
        raise ValueError(f"expected at most {MAX_SECONDS_TEXT}, not {value!r}")
    return float(value)


def _via(parse: Callable[[str], object]) -> Callable[[str], object]:
    """A parser that raises ForkserveError, as one that raises ValueError."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ForkserveError as exc:
            raise ValueError(str(exc)) from None

    return convert


def _argv(value: object) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise ValueError("expected a non-empty list of strings: [PROGRAM, ARGS...]")
    return list(value)


def _text(text: str) -> str:
    return text


COUNT = Kind("a whole number, 1 or more", _count, (int,), _at_least_one)
SECONDS = Kind(f"seconds, 0 to {MAX_SECONDS}", _seconds, (int, float), _nonnegative)
FLAG = Kind("true or false", _text, (bool,))
TEXT = Kind("a string", _text, (str,))
ADDRESS = Kind(
    "an address, [HOST:]PORT",
    _via(parse_listen_address),
    (str, int),
    lambda value: _via(parse_listen_address)(str(value)),  # a port alone may be a number
)

LISTEN = Kind(
    "an address, [HOST:]PORT, unix:PATH or unix:@NAME",
    _via(parse_listen),
    (str, int),
    lambda value: _via(parse_listen)(str(value)),
)
# TOML writes it as "0660" or 0o660.
FILE_MODE = Kind(
    "a file mode in octal: 0660",
    parse_file_mode,
    (str, int),
    lambda value: parse_file_mode(value) if isinstance(value, str) else file_mode(value),
)
BANNER = Kind("text with \\r \\n \\t \\0 \\\\ \\xHH escapes", _via(parse_banner), (str,))
ARGV = Kind("a list of strings", _text, (list,), _argv)


def rules_kind(action: str) -> Kind:
    """``allow``/``deny``: a prefix on the command line, a list of them in a file."""
    from forkserve.core.rules import command_line_rule

    def one(text: str) -> Rule:
        return command_line_rule(action, text)  # RuleError is a ValueError

    def many(value: object) -> list[Rule]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError('expected a list of prefixes: ["10.0.0.0/8", ...]')
        return [one(text) for text in value]

    return Kind("prefixes (a list in a file)", one, (list, str), many)


def _prefix_length(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 128:
        raise ValueError(f"expected a prefix length from 0 to 128, not {text!r}")
    return int(text)


def _timeout(text: str) -> float:
    return _positive(_float_seconds(text))


def _positive(value: object) -> float:
    assert isinstance(value, int | float)
    if not 0 < value < float("inf"):
        raise ValueError(f"expected more than 0 seconds, not {value!r}")
    return _bounded(value)


def _size(text: str) -> int:
    from forkserve.core.units import parse_size

    return parse_size(text)


PREFIX_LENGTH = Kind(
    "a prefix length, 0 to 128", _prefix_length, (int,), lambda v: _prefix_length(str(v))
)
RATE = Kind("N/SECONDS", parse_rate, (str,))
TIMEOUT = Kind(f"seconds, more than 0, at most {MAX_SECONDS}", _timeout, (int, float), _positive)
SIZE = Kind("a size: 4096, 512M, 2G", _size, (str, int), lambda v: _size(str(v)))


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return list(value)


STRINGS = Kind("strings (a list in a file)", _text, (list,), _strings)


def choice(*values: str) -> Kind:
    def check(text: str) -> str:
        if text not in values:
            raise ValueError(f"expected one of {', '.join(values)}, not {text!r}")
        return text

    kind = Kind("one of " + ", ".join(values), check, (str,))
    kind.choices = values
    return kind


class Setting:
    """One setting: its key, type, default, help, the mode it belongs to, and reload.

    Attributes:
        key: the TOML key and the long option (``--KEY``).
        kind: its Kind.
        default: the value when neither the command line nor the file sets it.
        help: one or two sentences for ``--help`` and the docs.
        group: the section of ``--help`` and of the docs.
        metavar: the value's name in ``--help`` (none for flags).
        mode: "fork" or "prefork" if the setting belongs to one process model.
        reload: RELOAD or UPGRADE (see above).
        short: a one-letter option, if any.
        cli: "option" (``--KEY``), "positional" or "program" (after ``--``).
        default_text: the default as the docs show it, when not ``default``.
    """

    __slots__ = (
        "cli",
        "default",
        "default_text",
        "group",
        "help",
        "key",
        "kind",
        "metavar",
        "mode",
        "reload",
        "short",
    )

    def __init__(
        self,
        key: str,
        kind: Kind,
        default: object,
        help: str,
        *,
        group: str,
        metavar: str = "",
        mode: str = "",
        reload: str = UPGRADE,
        short: str = "",
        cli: str = "option",
        default_text: str = "",
    ) -> None:
        self.key = key
        self.kind = kind
        self.default = default
        self.help = help
        self.group = group
        self.metavar = metavar
        self.mode = mode
        self.reload = reload
        self.short = short
        self.cli = cli
        self.default_text = default_text

    @property
    def dest(self) -> str:
        """The Python name: ``max-conns`` -> ``max_conns``."""
        return self.key.replace("-", "_")


def by_key(settings: Iterable[Setting]) -> dict[str, Setting]:
    return {setting.key: setting for setting in settings}


def validate_table(
    table: Mapping[str, object], settings: Mapping[str, Setting], source: str
) -> dict[str, object]:
    """A config file's table, checked: ``{dest: value}``.

    Raises:
        UsageError: an unknown key, a value of the wrong type or out of range; the
            message names the file, the key and the reason.
    """
    values: dict[str, object] = {}
    for key, value in table.items():
        setting = settings.get(key)
        if setting is None:
            raise UsageError(f"{source}: unknown setting {key!r}{suggest(key, settings)}")
        try:
            values[setting.dest] = setting.kind.check(value)
        except ValueError as exc:
            raise UsageError(f"{source}: {key}: {exc}") from None
    return values


def suggest(key: str, settings: Mapping[str, Setting]) -> str:
    """`` (did you mean 'max-conns'?)`` for a near miss, else nothing."""
    try:
        import difflib  # only on this error path
    except ImportError:  # unreadable after a privilege drop: no suggestion, no crash
        return ""
    close = difflib.get_close_matches(key.replace("_", "-"), list(settings), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def changes(
    old: Mapping[str, object], new: Mapping[str, object], settings: Iterable[Setting]
) -> tuple[dict[str, object], list[str]]:
    """What a reload changes: ``({dest: value} to apply now, [keys needing SIGUSR2])``."""
    apply: dict[str, object] = {}
    upgrade: list[str] = []
    for setting in settings:
        name = setting.dest
        if old.get(name) == new.get(name):
            continue
        if setting.reload == RELOAD:
            apply[name] = new.get(name)
        else:
            upgrade.append(setting.key)
    return apply, upgrade


def render_settings_docs(settings: Iterable[Setting], source: str, command: str) -> str:
    """A Markdown page: every setting, its flag, config key, default and reload."""
    lines = [
        "# `forkserve serve` settings",
        "",
        f"Generated from `{source}` (`{command} > docs/options.md`); a test checks it is current.",
        "",
        "Every setting is a command-line option and a key of the `--config` TOML file "
        "(the option without its dashes). The command line overrides the file. "
        "*SIGHUP* says whether a reload applies a changed value to new connections, "
        "or whether it needs a SIGUSR2 upgrade (a reload logs it and keeps the old "
        "value).",
    ]
    group = ""
    for setting in settings:
        if setting.group != group:
            group = setting.group
            lines += ["", f"## {group[0].upper()}{group[1:]}", ""]
            lines += ["| option | config key | value | default | SIGHUP | meaning |"]
            lines += ["|---|---|---|---|---|---|"]
        lines.append(doc_row(setting))
    lines += ["", "`--config FILE` itself has no key: it names the file.", ""]
    return "\n".join(lines)


def doc_row(setting: Setting) -> str:
    if setting.cli == "positional":
        flag = f"`{setting.metavar}`"
    elif setting.cli == "program":
        flag = f"`-- {setting.metavar}`"
    else:
        flag = f"`--{setting.key}`" + (f", `{setting.short}`" if setting.short else "")
    default = setting.default_text or (
        "off" if setting.default is False else f"`{setting.default!s}`"
    )
    where = f" ({setting.mode} mode)" if setting.mode else ""
    reload = "applies" if setting.reload == RELOAD else "upgrade"
    meaning = setting.help.replace("|", "\\|") + where
    return (
        f"| {flag} | `{setting.key}` | {setting.kind.name.replace('|', '/')} | {default} "
        f"| {reload} | {meaning} |"
    )
