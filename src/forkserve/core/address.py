"""Parsing and formatting of socket addresses (pure: no I/O).

forkserve writes addresses the way URLs do: ``127.0.0.1:9000`` and ``[::1]:9000``;
a Unix-domain socket as ``unix:PATH`` (a socket file) or ``unix:@NAME`` (Linux's
abstract namespace, no file), as gunicorn's ``-b unix:PATH`` and systemd's
``ListenStream=@NAME`` write them.
"""

from __future__ import annotations

from forkserve._errors import AddressError

DEFAULT_HOST = "127.0.0.1"

UNIX_PREFIX = "unix:"
# sun_path is 108 bytes on Linux (unix(7)); a path takes them all but its
# terminating NUL, an abstract name all but its leading NUL.
SUN_PATH_SIZE = 108

_HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")


def parse_port(text: str) -> int:
    """Parse a TCP port number, 0 to 65535.

    Raises:
        AddressError: not a decimal number in range.
    """
    if not text or not text.isascii() or not text.isdigit():
        raise AddressError(f"invalid port {text!r}: expected a number from 0 to 65535")
    port = int(text)
    if port > 65535:
        raise AddressError(f"invalid port {text!r}: expected a number from 0 to 65535")
    return port


def check_host(host: str) -> str:
    """Check that ``host`` is an IP literal or a plausible host name; return it.

    Raises:
        AddressError: empty, or characters no host name has.
    """
    if not host:
        raise AddressError("empty host")
    import ipaddress  # lazily: the forker parses no host (see core.rules)

    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    if ":" in host:
        raise AddressError(f"invalid IPv6 address {host!r}")
    if not set(host) <= _HOSTNAME_CHARS or len(host) > 253:
        raise AddressError(f"invalid host {host!r}")
    return host


def parse_listen_address(text: str, default_host: str = DEFAULT_HOST) -> tuple[str, int]:
    """Parse ``[HOST:]PORT``, with IPv6 hosts in brackets: ``[::1]:9000``, ``[::]:0``.

    Returns:
        ``(host, port)``; the host is ``default_host`` when only a port is given.

    Raises:
        AddressError: the text is not of that form.
    """
    text = text.strip()
    if not text:
        raise AddressError("empty address: expected [HOST:]PORT")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise AddressError(f"invalid address {text!r}: missing ']' after the IPv6 address")
        import ipaddress

        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise AddressError(f"invalid address {text!r}: expected ':PORT' after ']'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"invalid IPv6 address {host!r} in {text!r}") from None
        return host, parse_port(rest[1:])
    if ":" not in text:
        return default_host, parse_port(text)
    host, _, port_text = text.rpartition(":")
    if ":" in host:
        raise AddressError(
            f"invalid address {text!r}: write IPv6 addresses in brackets, [::1]:9000"
        )
    return check_host(host), parse_port(port_text)


def is_unix_address(text: object) -> bool:
    """Whether ``text`` names a Unix-domain socket (``unix:...``)."""
    return isinstance(text, str) and text.strip().startswith(UNIX_PREFIX)


def parse_unix_address(text: str) -> str | bytes:
    """Parse ``unix:PATH`` or ``unix:@NAME`` into what ``bind(2)`` takes for AF_UNIX.

    Returns:
        The path (``str``) of a socket file, or ``b"\\0NAME"`` for an abstract name.

    Raises:
        AddressError: no ``unix:`` prefix, nothing after it, a NUL byte, or too long
            for ``sun_path`` (107 bytes of path or of abstract name).
    """
    text = text.strip()
    if not text.startswith(UNIX_PREFIX):
        raise AddressError(f"invalid Unix socket address {text!r}: expected unix:PATH")
    rest = text[len(UNIX_PREFIX) :]
    if not rest or rest == "@":
        raise AddressError(f"empty Unix socket address {text!r}: expected unix:PATH or unix:@NAME")
    if "\0" in rest:
        raise AddressError(f"invalid Unix socket address {text!r}: it contains a NUL byte")
    abstract = rest.startswith("@")
    encoded = (rest[1:] if abstract else rest).encode("utf-8", "surrogateescape")
    if len(encoded) > SUN_PATH_SIZE - 1:
        raise AddressError(
            f"Unix socket address too long ({len(encoded)} bytes, at most "
            f"{SUN_PATH_SIZE - 1}): {text!r}"
        )
    return b"\0" + encoded if abstract else rest


def parse_listen(text: str) -> tuple[str, int] | str:
    """What to listen on: ``[HOST:]PORT`` as ``(host, port)`` (see
    parse_listen_address), or ``unix:PATH``/``unix:@NAME`` checked (see
    parse_unix_address) and kept as text.

    Raises:
        AddressError: neither.
    """
    if is_unix_address(text):
        parse_unix_address(text)
        return text.strip()
    return parse_listen_address(text)


def format_unix_address(address: str | bytes) -> str:
    """A Unix socket's bound address as ``unix:`` text: ``unix:/run/x.sock``, or
    ``unix:@NAME`` for an abstract one (``getsockname()`` gives it as bytes starting
    with NUL)."""
    if isinstance(address, bytes):
        if address.startswith(b"\0"):
            return UNIX_PREFIX + "@" + address[1:].decode("utf-8", "backslashreplace")
        address = address.decode("utf-8", "surrogateescape")
    return UNIX_PREFIX + address


def format_credentials(peer: tuple[int, int, int]) -> str:
    """A Unix peer's credentials (``SO_PEERCRED``: pid, uid, gid) for logs."""
    return f"pid:{peer[0]},uid:{peer[1]},gid:{peer[2]}"


def format_address(address: object) -> str:
    """Format a socket address for logs: ``1.2.3.4:5``, ``[::1]:5``, a Unix peer's
    credentials (``pid:4242,uid:1000,gid:1000``: see ``format_credentials``), or a
    Unix path."""
    if isinstance(address, tuple) and len(address) >= 2:
        if len(address) == 3 and isinstance(address[0], int):
            return format_credentials(address)
        host, port = address[0], address[1]
        if isinstance(host, str) and ":" in host:
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    if isinstance(address, str):
        return address or "unix"
    if isinstance(address, bytes):
        return address.decode("utf-8", "backslashreplace") or "unix"
    return repr(address)


def host_of(peer: object) -> str:
    """What the access rules and per-source limits see of a client: its IP address,
    or a Unix peer's credentials as ``format_credentials`` writes them (see
    core.rules.parse_ip); ``""`` when it is neither."""
    if isinstance(peer, tuple) and peer:
        if isinstance(peer[0], str):
            return peer[0]
        if len(peer) == 3 and isinstance(peer[0], int):
            return format_credentials(peer)
    return ""
