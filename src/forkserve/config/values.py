"""``Settings``: what a ``Server`` is configured with, typed (pure: no I/O).

The settings table (config.table) declares each setting once, for the command line
and the config file; ``Settings`` is the same settings as typed attributes, the one
object that goes from the command line (config.options) to ``Server``, to the
builders (parent.assemble) and to a SIGHUP reload (config.reload). Most table rows
are one attribute of the same name; ``FOLDED`` names the others, and a unit test
(tests/unit/test_settings.py) checks the two against each other.

A class with ``__slots__``, not a dataclass: dataclasses imports ``inspect`` into
the forking parent (see tests/unit/test_lean_parent.py).
"""

from __future__ import annotations

from forkserve._log import INFO
from forkserve.config.defaults import (
    DEFAULT_BACKLOG,
    DEFAULT_GRACE,
    DEFAULT_MAX_CONNS,
    DEFAULT_MAX_SPARE,
    DEFAULT_MAX_WORKERS,
    DEFAULT_MIN_SPARE,
    DEFAULT_UPGRADE_TIMEOUT,
)
from forkserve.core.gate import DEFAULT_IPV6_PREFIX

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import TypedDict, Unpack

    from forkserve.core.rules import RuleSet

    class Options(TypedDict, total=False):
        """The keyword arguments of ``Settings`` and ``forkserve.Server``, for type
        checkers only (never defined at run time): each attribute of Settings, with
        its type (a unit test checks the two lists are the same)."""

        mode: str
        max_conns: int
        min_spare: int
        max_spare: int
        max_workers: int
        max_requests: int
        backlog: int
        grace: float
        upgrade_timeout: float
        banner: bytes
        rules: Sequence[str] | RuleSet | None
        default_policy: str | None
        per_ip: int
        rate: tuple[int, float] | None
        ipv6_prefix: int
        reject_message: bytes
        idle_timeout: float
        max_lifetime: float
        handshake_timeout: float
        user: str | None
        group: str | None
        rlimits: Mapping[str, int] | None
        proxy_protocol: str
        proxy_from: tuple[str, ...]
        tls_cert: str | None
        tls_key: str | None
        tls_client_ca: str | None
        metrics: tuple[str, int] | str | None
        socket_mode: int | None
        socket_user: str | None
        socket_group: str | None
        log_format: str
        log_level: int


# The default of each attribute (``forkserve.Server``'s keyword arguments).
DEFAULTS: dict[str, object] = {
    "mode": "fork",
    "max_conns": DEFAULT_MAX_CONNS,
    "min_spare": DEFAULT_MIN_SPARE,
    "max_spare": DEFAULT_MAX_SPARE,
    "max_workers": DEFAULT_MAX_WORKERS,
    "max_requests": 0,
    "backlog": DEFAULT_BACKLOG,
    "grace": DEFAULT_GRACE,
    "upgrade_timeout": DEFAULT_UPGRADE_TIMEOUT,
    "banner": b"",
    "rules": None,
    "default_policy": None,
    "per_ip": 0,
    "rate": None,
    "ipv6_prefix": DEFAULT_IPV6_PREFIX,
    "reject_message": b"",
    "idle_timeout": 0.0,
    "max_lifetime": 0.0,
    "handshake_timeout": 0.0,
    "user": None,
    "group": None,
    "rlimits": None,
    "proxy_protocol": "",
    "proxy_from": (),
    "tls_cert": None,
    "tls_key": None,
    "tls_client_ca": None,
    "metrics": None,
    "socket_mode": None,
    "socket_user": None,
    "socket_group": None,
    "log_format": "text",
    "log_level": INFO,
}

# Table rows that are not an attribute of their own: where each one goes.
FOLDED = {
    "listen": "Server's address",
    "print_port": "the command line's ready callback",
    "handler": "Server's handler",
    "program": "Server's handler (a Program)",
    "reverse_lookup": "Server's handler (a Program)",
    "local_host": "Server's handler (a Program)",
    "allow": "rules",
    "deny": "rules",
    "limit_nofile": "rlimits",
    "limit_as": "rlimits",
    "limit_cpu": "rlimits",
    "limit_nproc": "rlimits",
    "quiet": "log_level",
    "verbose": "log_level",
}


class Settings:
    """A server's settings: ``Settings(max_conns=100, grace=5.0)``.

    Each keyword argument is an attribute, with the meaning ``forkserve.Server``'s
    docstring gives it; those not given take their default (``DEFAULTS``). Values
    are checked where they are used (parent.assemble), so the Python API and the
    command line refuse the same mistakes. Treat it as a value: ``replace()`` makes
    a changed copy.

    Raises:
        TypeError: a keyword that is no setting, as a function call would.
    """

    __slots__ = tuple(DEFAULTS)

    mode: str
    max_conns: int
    min_spare: int
    max_spare: int
    max_workers: int
    max_requests: int
    backlog: int
    grace: float
    upgrade_timeout: float
    banner: bytes
    rules: Sequence[str] | RuleSet | None
    default_policy: str | None
    per_ip: int
    rate: tuple[int, float] | None
    ipv6_prefix: int
    reject_message: bytes
    idle_timeout: float
    max_lifetime: float
    handshake_timeout: float
    user: str | None
    group: str | None
    rlimits: Mapping[str, int] | None
    proxy_protocol: str
    proxy_from: tuple[str, ...]
    tls_cert: str | None
    tls_key: str | None
    tls_client_ca: str | None
    metrics: tuple[str, int] | str | None
    socket_mode: int | None
    socket_user: str | None
    socket_group: str | None
    log_format: str
    log_level: int

    def __init__(self, **options: Unpack[Options]) -> None:
        for name, value in DEFAULTS.items():
            setattr(self, name, value)
        self.update(options)

    def replace(self, **options: Unpack[Options]) -> Settings:
        """A copy with ``options`` changed."""
        copy = Settings()
        copy.update({name: getattr(self, name) for name in DEFAULTS})
        copy.update(options)
        return copy

    def update(self, options: Mapping[str, object]) -> None:
        """Set the attributes ``options`` names (see the class's Raises)."""
        for name, value in options.items():
            if name not in DEFAULTS:
                raise TypeError(f"unexpected keyword argument {name!r}")
            setattr(self, name, value)

    @property
    def socket_file_options(self) -> bool:
        """Whether --socket-mode, --socket-user or --socket-group is given."""
        return any(
            value is not None for value in (self.socket_mode, self.socket_user, self.socket_group)
        )

    @property
    def pool(self) -> tuple[int, int, int, int]:
        """The prefork pool's ``(min_spare, max_spare, max_workers, max_requests)``."""
        return (self.min_spare, self.max_spare, self.max_workers, self.max_requests)

    def __repr__(self) -> str:
        changed = [
            f"{name}={getattr(self, name)!r}"
            for name, default in DEFAULTS.items()
            if getattr(self, name) != default
        ]
        return f"Settings({', '.join(changed)})"
