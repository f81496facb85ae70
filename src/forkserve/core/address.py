"""Parsing and formatting of socket addresses (pure: no I/O).

forkserve writes addresses the way URLs do: ``127.0.0.1:9000`` and ``[::1]:9000``.
"""

from __future__ import annotations

from forkserve._errors import AddressError

DEFAULT_HOST = "127.0.0.1"

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
    import ipaddress  # lazily: the forking parent needs it only while parsing

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


def format_address(address: object) -> str:
    """Format a socket address for logs: ``1.2.3.4:5``, ``[::1]:5``, or a Unix path."""
    if isinstance(address, tuple) and len(address) >= 2:
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
    """The client's address as text, from a peer address (``""`` for a Unix socket)."""
    if isinstance(peer, tuple) and isinstance(peer[0], str):
        return peer[0]
    return ""
