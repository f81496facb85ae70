"""The settings of ``forkserve serve``: the one table (see config.settings for what reads it).

To add an option, add a row here: the parser, the config file, reloads and
``docs/options.md`` (``python -m forkserve.config.table > docs/options.md``) follow.
"""

from __future__ import annotations

from forkserve._log import FORMATS
from forkserve.config.defaults import (
    DEFAULT_BACKLOG,
    DEFAULT_GRACE,
    DEFAULT_MAX_CONNS,
    DEFAULT_MAX_SPARE,
    DEFAULT_MAX_WORKERS,
    DEFAULT_MIN_SPARE,
    DEFAULT_UPGRADE_TIMEOUT,
)
from forkserve.config.settings import (
    ADDRESS,
    ARGV,
    BANNER,
    COUNT,
    FILE_MODE,
    FLAG,
    LISTEN,
    PREFIX_LENGTH,
    RATE,
    RELOAD,
    SECONDS,
    SIZE,
    STRINGS,
    TEXT,
    TIMEOUT,
    Setting,
    by_key,
    choice,
    render_settings_docs,
    rules_kind,
)
from forkserve.core.gate import DEFAULT_IPV6_PREFIX
from forkserve.core.names import MODES, RLIMIT_NAMES

ACCESS = "access control and limits per client address"
TIMES = "time limits per connection"
PRIVILEGES = "privileges and resource limits"
LISTENING = "listening"
EDGE = "PROXY protocol and TLS"
POOL = "prefork pool (with --mode prefork)"
SERVICE = "what runs for each connection"
OPERATIONS = "logs and metrics"

GROUP_TEXT = {
    EDGE: "Both happen in the connection's process, never in the parent: PROXY header "
    "first, then the TLS handshake, both within --handshake-timeout.",
    ACCESS: "Decided in the parent before fork: a refused client costs no process.",
    SERVICE: "Echo by default. After '--', PROGRAM [ARGS...] is executed (never through "
    "a shell) with the connection on fd 0 and 1 and the UCSPI environment (PROTO, "
    "TCPREMOTEIP, ...).",
}

SERVE = (
    Setting(
        "listen",
        LISTEN,
        None,
        "where to listen: 9000, 0.0.0.0:9000, [::]:9000 (dual stack), [::1]:0; the host "
        "defaults to 127.0.0.1 and port 0 picks a free port. unix:PATH is a Unix-domain "
        "socket file, unix:@NAME one in the abstract namespace. Under systemd socket "
        "activation (LISTEN_FDS) the passed socket is served instead",
        group=LISTENING,
        metavar="[HOST:]PORT|unix:PATH",
        cli="positional",
        default_text="required",
    ),
    Setting(
        "print-port",
        FLAG,
        False,
        "print the bound port alone on one line of stdout once listening (a Unix "
        "socket: its path, or @NAME)",
        group=LISTENING,
    ),
    Setting(
        "socket-mode",
        FILE_MODE,
        None,
        "a Unix socket file's permissions, in octal (connecting needs write permission)",
        group=LISTENING,
        metavar="MODE",
        default_text="0666 less the umask",
    ),
    Setting(
        "socket-user",
        TEXT,
        None,
        "chown a Unix socket file to this user (name or number; needs root)",
        group=LISTENING,
        metavar="USER",
        default_text="the server's",
    ),
    Setting(
        "socket-group",
        TEXT,
        None,
        "chown a Unix socket file to this group (name or number)",
        group=LISTENING,
        metavar="GROUP",
        default_text="the server's",
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
        "allow",
        rules_kind("allow"),
        None,
        "allow clients in PREFIX (10.0.0.0/8, 192.0.2.7, 2001:db8::/32; on a Unix socket "
        "uid:N or gid:N); repeatable; "
        "rules apply in order, the first match wins. In a file: a list, and deny's "
        "entries come before allow's (for another order use a rules file)",
        group=ACCESS,
        metavar="PREFIX",
        cli="rule",
        reload=RELOAD,
        default_text="none",
    ),
    Setting(
        "deny",
        rules_kind("deny"),
        None,
        "deny clients in PREFIX; repeatable (see allow)",
        group=ACCESS,
        metavar="PREFIX",
        cli="rule",
        reload=RELOAD,
        default_text="none",
    ),
    Setting(
        "rules",
        TEXT,
        None,
        "more rules, after the command line's: ADDRESS[/LEN]:allow[,NAME=VALUE]... or "
        "ADDRESS[/LEN]:deny (uid:N, gid:N for a Unix socket's clients), one a line; "
        "SIGHUP re-reads it",
        group=ACCESS,
        metavar="FILE",
        reload=RELOAD,
        default_text="none",
    ),
    Setting(
        "default-policy",
        choice("allow", "deny"),
        None,
        "for clients no rule matches",
        group=ACCESS,
        metavar="{allow,deny}",
        reload=RELOAD,
        default_text="deny if any rule allows, else allow",
    ),
    Setting(
        "per-ip",
        COUNT,
        0,
        "connections at once from one IPv4 address or IPv6 prefix (on a Unix socket: from one uid)",
        group=ACCESS,
        metavar="N",
        reload=RELOAD,
        default_text="no limit",
    ),
    Setting(
        "ipv6-prefix",
        PREFIX_LENGTH,
        DEFAULT_IPV6_PREFIX,
        "IPv6 clients count per prefix this long (live connections are counted by "
        "it, so it changes only with a new process)",
        group=ACCESS,
        metavar="LEN",
    ),
    Setting(
        "rate",
        RATE,
        None,
        "new connections per address per period, e.g. 10/1 (a token bucket; the "
        "buckets carry on across a reload)",
        group=ACCESS,
        metavar="N/SECONDS",
        reload=RELOAD,
        default_text="no limit",
    ),
    Setting(
        "reject-message",
        BANNER,
        b"",
        "sent to a client refused by per-ip or rate; escapes as banner",
        group=ACCESS,
        metavar="TEXT",
        reload=RELOAD,
        default_text="none",
    ),
    Setting(
        "idle-timeout",
        TIMEOUT,
        0.0,
        "Python handlers: a read or write that waits this long ends the connection (exit 124)",
        group=TIMES,
        metavar="SECONDS",
        reload=RELOAD,
        default_text="none",
    ),
    Setting(
        "max-lifetime",
        TIMEOUT,
        0.0,
        "a connection's process group gets SIGTERM after this long, SIGKILL 1 s later "
        "(its timers run in order of start, so it changes only with a new process)",
        group=TIMES,
        metavar="SECONDS",
        default_text="none",
    ),
    Setting(
        "handshake-timeout",
        TIMEOUT,
        0.0,
        "the client must send its first byte within this long (else exit 125); with "
        "proxy-protocol or TLS, the time for the header and the handshake (default 10; "
        "then it changes only with a new process)",
        group=TIMES,
        metavar="SECONDS",
        reload=RELOAD,
        default_text="none",
    ),
    Setting(
        "user",
        TEXT,
        None,
        "after binding, switch to this user (a new process cannot switch back)",
        group=PRIVILEGES,
        metavar="NAME",
        default_text="none",
    ),
    Setting(
        "group",
        TEXT,
        None,
        "after binding, switch to this group",
        group=PRIVILEGES,
        metavar="NAME",
        default_text="none",
    ),
    *(
        Setting(
            f"limit-{name}",
            kind,
            None,
            text,
            group=PRIVILEGES,
            metavar=metavar,
            reload=RELOAD,
            default_text="none",
        )
        for name, kind, metavar, text in (
            ("nofile", COUNT, "N", "open descriptors per child (RLIMIT_NOFILE)"),
            ("as", SIZE, "SIZE", "address space per child, e.g. 512M (RLIMIT_AS)"),
            ("cpu", COUNT, "SECONDS", "CPU seconds per connection; then SIGXCPU (RLIMIT_CPU)"),
            ("nproc", COUNT, "N", "processes of the user, counted per user (RLIMIT_NPROC)"),
        )
    ),
    Setting(
        "proxy-protocol",
        choice("v1", "v2", "any"),
        None,
        "every connection starts with a PROXY header (HAProxy's send-proxy or "
        "send-proxy-v2); its client address replaces the balancer's everywhere",
        group=EDGE,
        metavar="{v1,v2,any}",
        default_text="off",
    ),
    Setting(
        "proxy-from",
        STRINGS,
        None,
        "accept PROXY headers only from this address or network (repeatable; a list "
        "in a file); others are refused and logged",
        group=EDGE,
        metavar="CIDR",
        cli="append",
        default_text="anyone",
    ),
    Setting(
        "tls-cert",
        TEXT,
        None,
        "serve TLS with this certificate chain; SIGHUP reads it (and the key) again",
        group=EDGE,
        metavar="PEM",
        default_text="none",
    ),
    Setting(
        "tls-key",
        TEXT,
        None,
        "the private key of tls-cert",
        group=EDGE,
        metavar="PEM",
        default_text="none",
    ),
    Setting(
        "tls-client-ca",
        TEXT,
        None,
        "require client certificates signed by these CAs",
        group=EDGE,
        metavar="PEM",
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
RLIMITS = RLIMIT_NAMES
# Flags that exclude each other, on the command line and in a file.
EXCLUSIVE = (("quiet", "verbose"),)


def render_docs() -> str:
    """``docs/options.md``, from the table."""
    return render_settings_docs(
        SERVE, "src/forkserve/config/table.py", "python -m forkserve.config.table"
    )


if __name__ == "__main__":
    print(render_docs(), end="")
