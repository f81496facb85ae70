"""The settings of ``forkserve serve``: the one table (see _settings for what reads it).

To add an option, add a row here: the parser, the config file, reloads and
``docs/options.md`` (``python -m forkserve._table > docs/options.md``) follow.
"""

from __future__ import annotations

from forkserve._listen import DEFAULT_BACKLOG
from forkserve._log import FORMATS
from forkserve._operate import DEFAULT_UPGRADE_TIMEOUT
from forkserve._server import (
    DEFAULT_GRACE,
    DEFAULT_MAX_CONNS,
    DEFAULT_MAX_SPARE,
    DEFAULT_MAX_WORKERS,
    DEFAULT_MIN_SPARE,
    MODES,
)
from forkserve._settings import (
    ADDRESS,
    ARGV,
    BANNER,
    COUNT,
    FLAG,
    RELOAD,
    SECONDS,
    TEXT,
    Setting,
    by_key,
    choice,
)

LISTENING = "listening"
POOL = "prefork pool (with --mode prefork)"
SERVICE = "what runs for each connection"
OPERATIONS = "logs and metrics"

GROUP_TEXT = {
    SERVICE: "Echo by default. After '--', PROGRAM [ARGS...] is executed (never through "
    "a shell) with the connection on fd 0 and 1 and the UCSPI environment (PROTO, "
    "TCPREMOTEIP, ...).",
}

SERVE = (
    Setting(
        "listen",
        ADDRESS,
        None,
        "where to listen: 9000, 0.0.0.0:9000, [::]:9000 (dual stack), [::1]:0; the host "
        "defaults to 127.0.0.1 and port 0 picks a free port. Under systemd socket "
        "activation (LISTEN_FDS) the passed socket is served instead",
        group=LISTENING,
        metavar="[HOST:]PORT",
        cli="positional",
        default_text="required",
    ),
    Setting(
        "print-port",
        FLAG,
        False,
        "print the bound port alone on one line of stdout once listening",
        group=LISTENING,
    ),
    Setting(
        "mode",
        choice(*MODES),
        "fork",
        "fork: a fresh process per connection; prefork: a dynamic pool of reusable "
        "worker processes",
        group=LISTENING,
        metavar="{" + ",".join(MODES) + "}",
    ),
    Setting(
        "max-conns",
        COUNT,
        None,
        "connections served at once; more wait in the kernel backlog",
        group=LISTENING,
        metavar="N",
        mode="fork",
        reload=RELOAD,
        default_text=str(DEFAULT_MAX_CONNS),
    ),
    Setting(
        "backlog",
        COUNT,
        DEFAULT_BACKLOG,
        "listen queue length, capped by net.core.somaxconn",
        group=LISTENING,
        metavar="N",
    ),
    Setting(
        "grace",
        SECONDS,
        DEFAULT_GRACE,
        "on SIGTERM/SIGINT (and after a SIGUSR2 upgrade), how long connections may take "
        "to finish before their processes are terminated",
        group=LISTENING,
        metavar="SECONDS",
        reload=RELOAD,
    ),
    Setting(
        "upgrade-timeout",
        SECONDS,
        DEFAULT_UPGRADE_TIMEOUT,
        "after SIGUSR2, how long the new server may take to be ready; then the running "
        "one gives up on it and keeps serving",
        group=LISTENING,
        metavar="SECONDS",
        reload=RELOAD,
    ),
    Setting(
        "min-spare",
        COUNT,
        None,
        "idle workers kept ready, at least",
        group=POOL,
        metavar="N",
        mode="prefork",
        reload=RELOAD,
        default_text=str(DEFAULT_MIN_SPARE),
    ),
    Setting(
        "max-spare",
        COUNT,
        None,
        "idle workers kept, at most; more retire",
        group=POOL,
        metavar="N",
        mode="prefork",
        reload=RELOAD,
        default_text=str(DEFAULT_MAX_SPARE),
    ),
    Setting(
        "max-workers",
        COUNT,
        None,
        "workers at most, which is also the cap on connections served at once",
        group=POOL,
        metavar="N",
        mode="prefork",
        reload=RELOAD,
        default_text=str(DEFAULT_MAX_WORKERS),
    ),
    Setting(
        "max-requests",
        COUNT,
        None,
        "replace a worker after it has served N connections",
        group=POOL,
        metavar="N",
        mode="prefork",
        reload=RELOAD,
        default_text="never",
    ),
    Setting(
        "handler",
        TEXT,
        None,
        "a Python handler, imported once before serving: pkg.module:function, "
        "path/to/file.py:function, or a built-in: echo, discard, daytime, chargen",
        group=SERVICE,
        metavar="NAME",
        default_text="echo",
    ),
    Setting(
        "program",
        ARGV,
        None,
        "exec mode: the program and its arguments, run for each connection with it on "
        "fd 0 and 1 (on the command line: everything after '--')",
        group=SERVICE,
        metavar="PROGRAM [ARGS...]",
        cli="program",
        default_text="none",
    ),
    Setting(
        "banner",
        BANNER,
        b"",
        "send TEXT to each client before the handler or program starts; escapes "
        "\\n \\r \\t \\0 \\\\ \\xHH are decoded and no newline is added",
        group=SERVICE,
        metavar="TEXT",
        reload=RELOAD,
        default_text="none",
    ),
    Setting(
        "reverse-lookup",
        FLAG,
        False,
        "exec mode: set TCPREMOTEHOST and TCPLOCALHOST by reverse lookups (tcpserver's -h)",
        group=SERVICE,
    ),
    Setting(
        "local-host",
        TEXT,
        None,
        "exec mode: set TCPLOCALHOST to NAME without a lookup (tcpserver's -l)",
        group=SERVICE,
        metavar="NAME",
        default_text="none",
    ),
    Setting(
        "metrics",
        ADDRESS,
        None,
        "serve Prometheus metrics at http://HOST:PORT/metrics and a health check at "
        "/healthz, from the server's own loop",
        group=OPERATIONS,
        metavar="[HOST:]PORT",
        default_text="none",
    ),
    Setting(
        "log-format",
        choice(*FORMATS),
        "text",
        "text: one 'TIMESTAMP EVENT key=value ...' line per event; json: one JSON "
        "object per line with the same fields",
        group=OPERATIONS,
        metavar="{" + ",".join(FORMATS) + "}",
        reload=RELOAD,
    ),
    Setting(
        "quiet",
        FLAG,
        False,
        "log only warnings and life-cycle events",
        group=OPERATIONS,
        short="-q",
        reload=RELOAD,
    ),
    Setting(
        "verbose",
        FLAG,
        False,
        "log debugging detail",
        group=OPERATIONS,
        short="-v",
        reload=RELOAD,
    ),
)
SERVE_BY_KEY = by_key(SERVE)
# Flags that exclude each other, on the command line and in a file.
EXCLUSIVE = (("quiet", "verbose"),)


def render_docs() -> str:
    """``docs/options.md``: every setting, its flag, config key, default and reload."""
    lines = [
        "# `forkserve serve` settings",
        "",
        "Generated from `src/forkserve/_table.py` (`python -m forkserve._table > "
        "docs/options.md`); a test checks it is current.",
        "",
        "Every setting is a command-line option and a key of the `--config` TOML file "
        "(the option without its dashes). The command line overrides the file. "
        "*SIGHUP* says whether a reload applies a changed value to new connections, "
        "or whether it needs a SIGUSR2 upgrade (a reload logs it and keeps the old "
        "value).",
    ]
    group = ""
    for setting in SERVE:
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


if __name__ == "__main__":
    print(render_docs(), end="")
