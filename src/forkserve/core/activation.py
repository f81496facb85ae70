"""The systemd protocols, as data (pure: no I/O).

Socket activation (sd_listen_fds(3)): the service manager passes listening sockets as
descriptors 3, 4, ... and sets ``LISTEN_FDS`` (how many), ``LISTEN_PID`` (the process
they are for: a variable inherited by a child must not make it take them) and
``LISTEN_FDNAMES`` (colon-separated names, from ``FileDescriptorName=``).

Readiness (sd_notify(3)): ``NOTIFY_SOCKET`` names a Unix datagram socket, a path or,
starting with ``@``, an abstract-namespace name; each datagram is newline-separated
``KEY=VALUE`` assignments (``READY=1``, ``STATUS=...``).

forkserve's zero-downtime upgrade reuses socket activation to hand its sockets to the
new master, with two variables of its own (see parent.upgrade).
"""

from __future__ import annotations

from collections.abc import Mapping

from forkserve._errors import UsageError

SD_LISTEN_FDS_START = 3
LISTEN_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
# The name forkserve gives the metrics socket when it passes it on; a socket unit
# may use it too (FileDescriptorName=metrics).
METRICS_NAME = "metrics"


def parse_listen_fds(environ: Mapping[str, str], pid: int) -> list[tuple[int, str]]:
    """The descriptors passed to process ``pid``, with their names.

    Returns:
        ``[(fd, name), ...]`` from fd 3 up; empty when ``LISTEN_FDS`` is unset or
        ``LISTEN_PID`` names another process (the variables were inherited).
        A socket without a name is named ``unknown``, as sd_listen_fds_with_names
        does.

    Raises:
        UsageError: the variables are set but malformed.
    """
    count_text = environ.get("LISTEN_FDS")
    if count_text is None:
        return []
    pid_text = environ.get("LISTEN_PID", "")
    if not pid_text.isdigit():
        raise UsageError(f"LISTEN_PID must be a process id, not {pid_text!r}")
    if int(pid_text) != pid:
        return []
    if not count_text.isdigit():
        raise UsageError(f"LISTEN_FDS must be a number, not {count_text!r}")
    count = int(count_text)
    names_text = environ.get("LISTEN_FDNAMES")
    names = names_text.split(":") if names_text else ["unknown"] * count
    if len(names) != count:
        raise UsageError(f"LISTEN_FDNAMES names {len(names)} sockets but LISTEN_FDS is {count}")
    return [(SD_LISTEN_FDS_START + i, name) for i, name in enumerate(names)]


def choose_sockets(passed: list[tuple[int, str]]) -> tuple[int | None, int | None]:
    """Which passed descriptor to serve on, and which (if any) serves metrics.

    Returns:
        ``(listen_fd, metrics_fd)``; either is None when not passed.

    Raises:
        UsageError: more than one socket to serve on: forkserve serves one
            (``ListenStream=[::]:PORT`` takes IPv4 and IPv6 clients on one socket).
    """
    metrics = [fd for fd, name in passed if name == METRICS_NAME]
    serve = [(fd, name) for fd, name in passed if name != METRICS_NAME]
    if len(serve) > 1:
        names = ", ".join(name for _, name in serve)
        raise UsageError(
            f"{len(serve)} listening sockets were passed ({names}): forkserve serves "
            "one (name an extra one 'metrics' to serve metrics on it)"
        )
    if len(metrics) > 1:
        raise UsageError("more than one socket named 'metrics' was passed")
    return (serve[0][0] if serve else None), (metrics[0] if metrics else None)


def notify_address(value: str) -> str | bytes:
    """The address to send notifications to, from ``NOTIFY_SOCKET``.

    ``@name`` is the abstract namespace (a leading NUL byte on the wire);
    ``/path`` a socket file.

    Raises:
        UsageError: anything else (``vsock:`` addresses are not supported).
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode("utf-8", "surrogateescape")
    if value.startswith("/"):
        return value
    raise UsageError(f"NOTIFY_SOCKET must be an absolute path or @name, not {value!r}")


def notify_message(fields: Mapping[str, object]) -> bytes:
    """One notification datagram: ``KEY=VALUE`` lines (a value holds no newline)."""
    lines = (f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
    return "\n".join(lines).encode("utf-8", "replace")


def status_text(state: str, conns: str) -> str:
    """``STATUS=``: what ``systemctl status`` shows on its Status line."""
    return f"{state}; connections {conns}"
