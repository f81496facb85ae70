"""The connection's edge, in the child: the PROXY header, then the TLS handshake.

Both run in the connection's own process (a fork-mode child or a prefork worker),
never in the parent, so a client that is slow to send its header or to finish its
handshake holds only its own process. Both share one deadline, the handshake
timeout (``--handshake-timeout``; DEFAULT_DEADLINE when none is given), counted from
the moment the child starts on the connection.

Order, when both are on: the PROXY header comes first on the wire (the balancer
writes it before relaying the client's TLS records), then the access rules and
per-source limits on the client it names (``Connection.admit``: see child.ask), then the
TLS handshake, then the banner, then the handler or program.

The PROXY header is read exactly: ``ProxyReader.wanted()`` never asks for a byte past
its end, so the client's first byte stays in the socket for an exec'd program.
"""

from __future__ import annotations

import os
import socket

from forkserve._errors import ProxyProtocolError
from forkserve.child.prelude import EXIT_HANDSHAKE_TIMEOUT
from forkserve.core.address import format_address
from forkserve.core.gate import MAX_SECONDS, MAX_SECONDS_TEXT

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    import ssl

    from forkserve._log import Log
    from forkserve.child.connection import Connection
    from forkserve.core.proxy import ProxyHeader

# The deadline for the PROXY header and the TLS handshake when --handshake-timeout
# is not given: the specification asks for at least 3 s, to cover a TCP retransmit
# (section 1); HAProxy's own "timeout client" examples use 5 to 30 s.
DEFAULT_DEADLINE = 10.0
# The exit code of a child whose connection did not get through its edge: the
# deadline passed, the header was malformed or untrusted, or the handshake failed.
EXIT_EDGE_FAILED = EXIT_HANDSHAKE_TIMEOUT  # one code: did not get through its start


class TLSHolder:
    """The server's current SSLContext; ``reload`` swaps in a new one (SIGHUP).

    Fork-mode children inherit whichever context is current when they are forked.
    """

    __slots__ = ("cert", "client_ca", "context", "key")

    def __init__(self, cert: str, key: str, client_ca: str | None = None) -> None:
        from forkserve.child.tls import load_context

        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.context: ssl.SSLContext = load_context(cert, key, client_ca)

    def reload(self) -> None:
        """Load the files again; on failure keep the old context.

        Raises:
            TLSConfigError: the files no longer load (the caller logs it).
        """
        from forkserve.child.tls import load_context

        self.context = load_context(self.cert, self.key, self.client_ca)


class Edge:
    """What a child does with a connection before the banner: PROXY, then TLS.

    Args:
        proxy: ``"v1"``, ``"v2"``, ``"any"``, or ``""`` for no PROXY protocol.
        trusted: ``(packed, prefix)`` networks a header is accepted from
            (``--proxy-from``); empty means from anyone.
        tls: the TLS context holder, or None for plain TCP.
        deadline: seconds for the header and the handshake together.
        log: where the child logs ``proxy``, ``tls``, ``reject`` and ``timeout``.
    """

    __slots__ = ("deadline", "log", "proxy", "tls", "trusted")

    def __init__(
        self,
        log: Log,
        *,
        proxy: str = "",
        trusted: tuple[tuple[bytes, int], ...] = (),
        tls: TLSHolder | None = None,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.log = log
        self.proxy = proxy
        self.trusted = trusted
        self.tls = tls
        self.deadline = deadline

    def __bool__(self) -> bool:
        return bool(self.proxy) or self.tls is not None

    def describe(self) -> dict[str, object]:
        """Fields for the ``listen`` line."""
        fields: dict[str, object] = {}
        if self.proxy:
            fields["proxy"] = self.proxy
        if self.tls is not None:
            fields["tls"] = "client-cert" if self.tls.client_ca else "on"
        return fields

    def __call__(self, conn: socket.socket, info: Connection) -> socket.socket | int:
        """Run the edge; return the socket to serve (an SSLSocket with TLS) or an
        exit code when the connection ends here.

        Resource handling: closes ``conn`` when it returns an exit code.
        Error handling: nothing is retried; every failure ends the connection, logged.
        """
        import time

        end = time.monotonic() + self.deadline
        result: socket.socket | int = conn
        try:
            if self.proxy:
                result = self.read_proxy(conn, info, end)
                if info.admit is not None and not isinstance(result, int):
                    # The rules and limits judge the client the header named (child.ask),
                    # before the handshake: a refused client costs no TLS either.
                    refused = info.admit(conn, info)
                    result = result if refused is None else refused
            if self.tls is not None and not isinstance(result, int):
                result = self.handshake(conn, info, end)
        except TimeoutError:
            self.log.info(
                "timeout",
                pid=os.getpid(),
                peer=format_address(info.peer),
                kind="handshake",
                after=f"{self.deadline:g}s",
            )
            result = EXIT_EDGE_FAILED
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            result = 0  # the client went away: its choice, not a fault
        if isinstance(result, int):
            conn.close()
        return result

    def reject(self, info: Connection, reason: str, detail: str) -> int:
        self.log.info(
            "reject", pid=os.getpid(), peer=format_address(info.peer), reason=reason, detail=detail
        )
        return EXIT_EDGE_FAILED

    def read_proxy(self, conn: socket.socket, info: Connection, end: float) -> socket.socket | int:
        """Read the PROXY header and put its addresses in ``info``."""
        from forkserve.core.proxynet import in_networks

        balancer = format_address(info.peer)
        host = info.peer[0] if isinstance(info.peer, tuple) else ""
        if self.trusted and not in_networks(host, self.trusted):
            return self.reject(info, "proxy", f"untrusted source {balancer} (see --proxy-from)")
        try:
            header = read_header(conn, self.proxy, end)
        except ProxyProtocolError as exc:
            return self.reject(info, "proxy", str(exc))
        if header is None:  # connected and closed, sending nothing: a TCP check or a scan
            self.log.debug("closed", pid=os.getpid(), peer=balancer, before="proxy")
            return 0
        fields: dict[str, object] = {"pid": os.getpid()}
        if header.source is not None:
            info.peer, info.local = header.source, header.destination
        fields.update(peer=format_address(info.peer), via=balancer, version=header.version)
        if header.source is None:
            fields["command"] = header.command if header.version == 2 else header.family
        if header.authority is not None:
            fields["authority"] = header.authority
        self.log.info("proxy", **fields)
        return conn

    def handshake(self, conn: socket.socket, info: Connection, end: float) -> socket.socket | int:
        """Run the TLS handshake as the server; return the SSLSocket."""
        import ssl
        import time

        assert self.tls is not None
        conn.settimeout(max(end - time.monotonic(), 0.001))
        try:
            tls = self.tls.context.wrap_socket(conn, server_side=True)
        except ssl.SSLError as exc:
            return self.reject(info, "tls", exc.reason or str(exc))
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise
            return self.reject(info, "tls", exc.strerror or str(exc))
        tls.settimeout(None)
        cipher = tls.cipher()
        self.log.debug(
            "tls",
            pid=os.getpid(),
            peer=format_address(info.peer),
            version=tls.version() or "",
            cipher=cipher[0] if cipher else "",
        )
        return tls


def read_header(conn: socket.socket, accept: str, end: float) -> ProxyHeader | None:
    """Read one PROXY header from ``conn``, never a byte past it, by ``end``.

    Returns:
        The header, or None if the client closed without sending a byte.

    Raises:
        ProxyProtocolError: the bytes are not a valid header.
        TimeoutError: ``end`` (a monotonic time) passed first.
    """
    import time

    from forkserve.core.proxy import ProxyReader

    reader = ProxyReader(accept)
    while reader.result is None:
        conn.settimeout(max(end - time.monotonic(), 0.001))
        data = conn.recv(reader.wanted())
        if not data:
            if reader.buffer:
                raise ProxyProtocolError("truncated", f"closed after {len(reader.buffer)} bytes")
            return None
        reader.feed(data)
    conn.settimeout(None)
    return reader.result


def make_edge(
    log: Log,
    *,
    proxy_protocol: str = "",
    proxy_from: tuple[str, ...] = (),
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
    handshake_timeout: float = 0.0,
) -> Edge | None:
    """Check the PROXY and TLS settings and build the Edge (None when both are off).

    Loads the certificate now, in the parent, so children inherit the context.

    Raises:
        UsageError: settings that do not fit together or do not parse (exit 100);
            TLSConfigError for files that do not load.
    """
    from forkserve._errors import UsageError

    if proxy_protocol not in ("", "v1", "v2", "any"):
        raise UsageError(f"proxy protocol must be v1, v2 or any, not {proxy_protocol!r}")
    if proxy_from and not proxy_protocol:
        raise UsageError("--proxy-from names who may send PROXY headers: it needs --proxy-protocol")
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    if not 0 <= handshake_timeout <= MAX_SECONDS:  # poll(2)'s limit: see core.gate
        raise UsageError(
            f"handshake timeout must be 0 to {MAX_SECONDS_TEXT}, not {handshake_timeout}"
        )
    if proxy_protocol:
        # Loaded here, once, not in each connection's process at its first header:
        # the forker's children share it (it brings ipaddress).
        import forkserve.core.proxy  # noqa: F401
    trusted = tuple(trusted_network(text) for text in proxy_from)
    tls = TLSHolder(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None
    edge = Edge(
        log,
        proxy=proxy_protocol,
        trusted=trusted,
        tls=tls,
        deadline=handshake_timeout or DEFAULT_DEADLINE,
    )
    return edge if edge else None


def trusted_network(text: str) -> tuple[bytes, int]:
    """One ``--proxy-from`` value: ``ADDRESS[/PREFIX]``.

    Raises:
        UsageError: not an IP address or network.
    """
    from forkserve._errors import UsageError
    from forkserve.core.proxynet import parse_network

    try:
        return parse_network(text.strip())
    except ProxyProtocolError:
        raise UsageError(
            f"invalid --proxy-from {text!r}: expected an IP address or network (10.0.0.0/8)"
        ) from None
