"""The UCSPI environment of an exec'd program, TCP or Unix (pure: no I/O).

Programs written for djb's ``tcpserver`` read who is connected from environment
variables (tcp-environ(5)). forkserve sets them exactly as Debian's ``tcpserver``
from ucspi-tcp-ipv6 (Felix von Leitner's IPv6 patch, "tcpserver6") does, checked
side by side by the integration tests:

- ``PROTO`` is ``TCP`` for an IPv4 client, including an IPv4 client of a dual-stack
  listener (an IPv4-mapped address, ``::ffff:1.2.3.4``), and ``TCP6`` for an IPv6
  client.
- ``TCPLOCALIP`` and ``TCPREMOTEIP`` are dotted quads for IPv4 (mapped addresses
  unwrapped) and the compressed RFC 5952 form for IPv6 (``::1``, ``2001:db8::7``),
  which is also how s6-tcpserver writes them.
- Every variable has a ``TCP6`` twin (``TCP6REMOTEIP`` ...), written for IPv4 in the
  mapped form, which programs patched for ucspi-tcp6 (qmail, qpsmtpd) read.
- ``TCPCONNNUM`` is s6-tcpserver's: connections already open from the same client
  address when this one was accepted, not counting it (the first gets ``0``).
- ``TCPREMOTEINFO`` (tcpserver's ident lookup) is never set.

On a Unix-domain socket (``unix:PATH``) the environment is ucspi-unix's instead, as
its ``unixserver`` sets it (its PROTOCOL file; compared side by side with Debian's
``ucspi-unix`` by the integration tests): ``PROTO=UNIX``; ``UNIXLOCALPATH``, the
socket's path (``@NAME`` for an abstract one); ``UNIXLOCALPID``, ``UNIXLOCALUID`` and
``UNIXLOCALGID``, the serving process's; ``UNIXREMOTEPID``, ``UNIXREMOTEEUID`` and
``UNIXREMOTEEGID``, the client's credentials from ``SO_PEERCRED``. See
``unix_environment``.

Inherited variables of these names that do not apply are removed, so a program never
sees a stale ``TCPREMOTEHOST`` from a tcpserver that started forkserve; so are the
TLS ones (``SSL_CLIENT_S_DN`` ...), which forkserve sets only with TLS and a client
certificate.
"""

from __future__ import annotations

from collections.abc import Mapping

# Every name tcpserver, tcpserver6, s6-tcpserver and unixserver may set: inherited ones are
# dropped before the connection's own are added.
UCSPI_NAMES = frozenset(
    {
        "PROTO",
        "TCPLOCALIP",
        "TCPLOCALPORT",
        "TCPLOCALHOST",
        "TCPREMOTEIP",
        "TCPREMOTEPORT",
        "TCPREMOTEHOST",
        "TCPREMOTEINFO",
        "TCPCONNNUM",
        "TCP6LOCALIP",
        "TCP6LOCALPORT",
        "TCP6LOCALHOST",
        "TCP6REMOTEIP",
        "TCP6REMOTEPORT",
        "TCP6REMOTEHOST",
        "TCP6REMOTEINFO",
        "TCP6CONNNUM",
        "TCP6INTERFACE",
        "UNIXLOCALPATH",
        "UNIXLOCALPID",
        "UNIXLOCALUID",
        "UNIXLOCALGID",
        "UNIXREMOTEPID",
        "UNIXREMOTEEUID",
        "UNIXREMOTEEGID",
    }
)

# The per-connection names of TLS (ucspi-ssl's sslserver, which took them from
# Apache's mod_ssl): forkserve sets some of them with --tls-cert (see child.tls), and only
# when they apply (SSL_TLS_SNI when the client sent one, SSL_CLIENT_* with a client
# certificate). Inherited ones are dropped like the UCSPI names, so a program never
# takes a stale SSL_CLIENT_S_DN for its client's. OpenSSL's own variables
# (SSL_CERT_FILE, SSL_CERT_DIR) configure the program, not describe the
# connection: they pass.
TLS_NAMES = frozenset(
    {
        "SSL_PROTOCOL",
        "SSL_CIPHER",
        "SSL_CIPHER_USEKEYSIZE",
        "SSL_CIPHER_ALGKEYSIZE",
        "SSL_CIPHER_EXPORT",
        "SSL_COMPRESS_METHOD",
        "SSL_SECURE_RENEG",
        "SSL_SESSION_ID",
        "SSL_SESSION_RESUMED",
        "SSL_TLS_SNI",
        "SSL_VERSION_INTERFACE",
        "SSL_VERSION_LIBRARY",
    }
)
TLS_PREFIXES = ("SSL_CLIENT_", "SSL_SERVER_")

MAPPED_PREFIX = "::ffff:"


def describes_a_connection(name: str) -> bool:
    """Whether an inherited variable describes some connection (a UCSPI or a TLS
    name), and so must not reach a program serving another."""
    return name in UCSPI_NAMES or name in TLS_NAMES or name.startswith(TLS_PREFIXES)


class Endpoint:
    """One end of a connection as the UCSPI variables write it.

    Attributes:
        ip: the address as ``TCP*IP`` shows it (IPv4 dotted quad, or IPv6).
        ip6: the address as ``TCP6*IP`` shows it (IPv6, IPv4 in mapped form).
        port: the port number.
        interface: the IPv6 scope (zone) name of a link-local address, or ``""``.
    """

    __slots__ = ("interface", "ip", "ip6", "port")

    def __init__(self, ip: str, ip6: str, port: int, interface: str = "") -> None:
        self.ip = ip
        self.ip6 = ip6
        self.port = port
        self.interface = interface

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.ip


def endpoint(address: object) -> Endpoint:
    """Read a socket address as ``getsockname()``/``getpeername()`` return it.

    Args:
        address: ``(host, port)`` for AF_INET or ``(host, port, flowinfo, scope_id)``
            for AF_INET6, with ``host`` in the form inet_ntop(3) writes (Python's
            socket module does), possibly ending in ``%zone`` for a scoped address.

    Raises:
        ValueError: not an IP socket address.
    """
    if not (isinstance(address, tuple) and len(address) >= 2):
        raise ValueError(f"not an IP socket address: {address!r}")
    host, port = address[0], address[1]
    if not isinstance(host, str) or not isinstance(port, int) or not host:
        raise ValueError(f"not an IP socket address: {address!r}")
    host, _, zone = host.partition("%")
    if ":" not in host:
        return Endpoint(host, MAPPED_PREFIX + host, port)
    lowered = host.lower()
    if lowered.startswith(MAPPED_PREFIX) and "." in lowered:
        ipv4 = host[len(MAPPED_PREFIX) :]
        return Endpoint(ipv4, MAPPED_PREFIX + ipv4, port)
    return Endpoint(lowered, lowered, port, zone)


def inherited_environment(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without the variables that describe some connection (see
    ``describes_a_connection``): what every program inherits."""
    return {name: value for name, value in base.items() if not describes_a_connection(name)}


def ucspi_environment(
    base: Mapping[str, str],
    local: Endpoint,
    remote: Endpoint,
    *,
    connnum: int,
    local_host: str | None = None,
    remote_host: str | None = None,
    extra: Mapping[str, str] | None = None,
    inherited: bool = False,
) -> dict[str, str]:
    """Build the complete environment of a program serving one connection.

    Args:
        base: the inherited environment; UCSPI and TLS names in it are dropped
            first (see ``describes_a_connection``), unless ``inherited`` says
            ``base`` is ``inherited_environment``'s result already (the supervisor
            keeps one for every connection it spawns a program for: filtering
            ``os.environ`` again cost 35 us a connection).
        local: the server's end (``getsockname()``).
        remote: the client's end (``getpeername()``).
        connnum: connections open from the client's address, this one included
            (what the parent counts); ``TCPCONNNUM`` is one less, as s6 sets it.
        local_host: ``TCPLOCALHOST``, or None to leave it unset.
        remote_host: ``TCPREMOTEHOST``, or None to leave it unset.
        extra: per-connection variables (access rules), added last: they win.

    Returns:
        A new dict; ``base`` is not modified.
    """
    env = dict(base) if inherited else inherited_environment(base)
    env["PROTO"] = "TCP6" if remote.is_ipv6 else "TCP"
    for prefix, use_ip6 in (("TCP", False), ("TCP6", True)):
        env[prefix + "LOCALIP"] = local.ip6 if use_ip6 else local.ip
        env[prefix + "LOCALPORT"] = str(local.port)
        env[prefix + "REMOTEIP"] = remote.ip6 if use_ip6 else remote.ip
        env[prefix + "REMOTEPORT"] = str(remote.port)
        env[prefix + "CONNNUM"] = str(max(connnum - 1, 0))
        if local_host is not None:
            env[prefix + "LOCALHOST"] = local_host
        if remote_host is not None:
            env[prefix + "REMOTEHOST"] = remote_host
    if remote.interface:
        env["TCP6INTERFACE"] = remote.interface
    if extra:
        env.update(extra)
    return env


def unix_environment(
    base: Mapping[str, str],
    local_path: str,
    local: tuple[int, int, int],
    remote: tuple[int, int, int],
    *,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build the environment of a program serving a Unix-domain connection.

    Args:
        base: the inherited environment; UCSPI and TLS names in it are dropped
            first (see ``describes_a_connection``), TCP ones included.
        local_path: the socket's path, or ``@NAME`` for an abstract one.
        local: ``(pid, uid, gid)`` of the process that serves the connection.
        remote: the client's ``(pid, uid, gid)`` from ``SO_PEERCRED``.
        extra: per-connection variables (access rules), added last: they win.

    Returns:
        A new dict; ``base`` is not modified.
    """
    env = {name: value for name, value in base.items() if not describes_a_connection(name)}
    env["PROTO"] = "UNIX"
    env["UNIXLOCALPATH"] = local_path
    env["UNIXLOCALPID"], env["UNIXLOCALUID"], env["UNIXLOCALGID"] = map(str, local)
    env["UNIXREMOTEPID"], env["UNIXREMOTEEUID"], env["UNIXREMOTEEGID"] = map(str, remote)
    if extra:
        env.update(extra)
    return env
