"""TLS: the server's SSLContext, and the UCSPI-SSL environment of an exec'd program.

Imported only when ``--tls-cert`` is given (``ssl`` costs the parent memory every
child maps). The context is loaded once, in the parent, at start-up and on SIGHUP;
each child inherits it and runs its own handshake (see ``child.edge``).

The environment names are ucspi-ssl's ``sslserver`` ones, which it took from
Apache's mod_ssl (so CGI-style programs already know them):

- ``SSL_PROTOCOL`` (``TLSv1.3``), ``SSL_CIPHER`` (``TLS_AES_256_GCM_SHA384``),
  ``SSL_CIPHER_USEKEYSIZE`` (bits), ``SSL_TLS_SNI`` (the server name the client asked
  for, when it sent one);
- with a client certificate (``--tls-client-ca``): ``SSL_CLIENT_S_DN`` and
  ``SSL_CLIENT_I_DN`` (subject and issuer, RFC 4514 order: ``CN=alice,O=Example``),
  ``SSL_CLIENT_S_DN_CN``, ``SSL_CLIENT_M_SERIAL`` (hex), ``SSL_CLIENT_V_START`` and
  ``SSL_CLIENT_V_END`` (as OpenSSL prints them).

The UCSPI-TCP names (``PROTO=TCP``, ``TCPREMOTEIP`` ...) stay as they are, so a
program written for tcpserver runs unchanged behind TLS.

The end of our data is a close_notify, then a FIN (``close_notify``, ``end_tls``),
as stunnel and socat send it: a client that reads the FIN alone cannot tell an end
from a cut (``openssl s_client``: "unexpected eof", exit 1). Then the client's own
end is awaited, what it still sends read and dropped (a lingering close, as nginx
and Apache do): closing a socket whose peer's bytes are unread, or still to come,
makes the kernel answer with a reset, and a reset throws away whatever of our output
the kernel had not delivered yet, close_notify included. The wait is bounded
(``LINGER``, ``LINGER_IDLE``: see child.linger).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl

from forkserve._errors import TLSConfigError
from forkserve.child.linger import linger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def load_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server SSLContext: TLS 1.2 or newer, the certificate chain and its key, and
    client certificates required and verified against ``client_ca`` when given.

    Raises:
        TLSConfigError: a file is missing or unreadable, or does not hold what it
            should (exit 100, one line).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # A client's FIN without close_notify is its end of data, not an attack: many
    # clients half-close that way, and exec'd programs can only see EOF either way.
    context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError included
        raise TLSConfigError(
            f"cannot load --tls-cert {cert!r} / --tls-key {key!r}: {why(exc)}"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except OSError as exc:
            raise TLSConfigError(f"cannot load --tls-client-ca {client_ca!r}: {why(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    context.sni_callback = remember_sni
    return context


def remember_sni(sock: Any, name: str | None, context: ssl.SSLContext) -> None:
    """Keep the server name the client asked for (``SSL_TLS_SNI``) on its socket."""
    if name:
        sock.forkserve_sni = name


def why(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"{exc.reason or exc.library or 'invalid'} (not PEM, or the key does not match)"
    return exc.strerror or str(exc)


def tls_environment(tls: ssl.SSLSocket) -> dict[str, str]:
    """The UCSPI-SSL variables for a connection whose handshake is done."""
    env: dict[str, str] = {"SSL_PROTOCOL": tls.version() or ""}
    cipher = tls.cipher()
    if cipher:
        env["SSL_CIPHER"] = cipher[0]
        env["SSL_CIPHER_USEKEYSIZE"] = str(cipher[2])
    sni = getattr(tls, "forkserve_sni", None)  # set by remember_sni
    if sni:
        env["SSL_TLS_SNI"] = sni
    cert = tls.getpeercert()
    if cert:
        env.update(client_certificate(cert))
    return env


def client_certificate(cert: dict[str, Any]) -> dict[str, str]:
    """The ``SSL_CLIENT_*`` variables from ``getpeercert()``'s dict."""
    env = {
        "SSL_CLIENT_S_DN": distinguished_name(cert.get("subject", ())),
        "SSL_CLIENT_I_DN": distinguished_name(cert.get("issuer", ())),
        "SSL_CLIENT_M_SERIAL": str(cert.get("serialNumber", "")),
        "SSL_CLIENT_V_START": str(cert.get("notBefore", "")),
        "SSL_CLIENT_V_END": str(cert.get("notAfter", "")),
    }
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                env["SSL_CLIENT_S_DN_CN"] = value
    return env


SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "emailAddress": "emailAddress",
}


def distinguished_name(rdns: Any) -> str:
    """RFC 4514 text, most specific first, from ``getpeercert()``'s nested tuples."""
    parts = []
    for rdn in reversed(rdns):
        parts.append("+".join(f"{SHORT_NAMES.get(k, k)}={escape_dn(v)}" for k, v in rdn))
    return ",".join(parts)


def escape_dn(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    return out


def close_notify(tls: ssl.SSLSocket) -> bytes:
    """Make ``tls``'s close_notify record with one SSL_shutdown, and return it.

    The caller writes the record to the socket as it is, then a FIN; the peer may
    still send, and ``tls.recv`` still reads it (OpenSSL reads application data after
    its own close_notify) up to the peer's close_notify or FIN. Call it once our last
    ``send`` has returned, so OpenSSL holds no half-written record.

    ``unwrap()`` cannot do this: CPython's shutdown calls SSL_shutdown a second time
    when the first returns 0, and that call reads the socket and throws away the
    application data it finds (OpenSSL 3: APPLICATION_DATA_AFTER_CLOSE_NOTIFY), so a
    half-closing client's last bytes in flight were lost. For the length of the call,
    then, the descriptor number OpenSSL uses points at one end of a fresh socketpair
    (dup2): the alert is written there, the second SSL_shutdown finds nothing to read
    there (SSLWantReadError), and the socket is put back under its number untouched.

    Returns:
        The record, or b"" when there is none: the connection had failed, or no
        descriptor was left for the stand-in (the FIN alone goes then).
    """
    try:
        stand_in, outlet = socket.socketpair()
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        return b""
    with stand_in, outlet:
        stand_in.setblocking(False)
        outlet.setblocking(False)
        if not shutdown_into(tls, stand_in):
            return b""
        return drain(outlet)


def shutdown_into(tls: ssl.SSLSocket, stand_in: socket.socket) -> bool:
    """One SSL_shutdown for ``tls`` with ``stand_in`` under its descriptor number;
    False when OpenSSL made no record or no descriptor was left."""
    fd, timeout = tls.fileno(), tls.gettimeout()
    try:
        real = os.dup(fd)
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        return False
    tls.settimeout(0)  # on the real socket: a timeout would wait on the stand-in
    os.dup2(stand_in.fileno(), fd, inheritable=False)
    try:
        tls._sslobj.shutdown()  # type: ignore[attr-defined]
    except ssl.SSLWantReadError:
        pass  # the alert is out; the peer's was not there to read: nothing lost
    except ssl.SSLError:
        return False  # a failed connection: OpenSSL sends nothing more
    finally:
        os.dup2(real, fd, inheritable=False)
        os.close(real)
        tls.settimeout(timeout)
    return True


def drain(sock: socket.socket) -> bytes:
    """Everything waiting on a non-blocking ``sock``."""
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def end_tls(tls: ssl.SSLSocket) -> None:
    """End our side of ``tls``: close_notify, then a FIN; the peer may go on sending.

    Writes wait as long as the socket's own timeout lets them (``--idle-timeout``),
    as the handler's writes did. Does nothing the second time, or once the SSL
    object is gone (``unwrap``, ``close``).

    Error handling: a client that has gone (reset, broken pipe, timed out, not
    connected) gets nothing more, and that is not an error here.
    """
    if getattr(tls, "forkserve_ended", False) or tls.fileno() < 0:
        return
    if getattr(tls, "_sslobj", None) is None:
        return
    tls.forkserve_ended = True  # type: ignore[attr-defined]
    record = close_notify(tls)
    try:
        # The plain socket's own methods, on the raw bytes: SSLSocket.shutdown()
        # would drop the SSL object, and the record is already encrypted.
        socket.socket.sendall(tls, record)
        socket.socket.shutdown(tls, socket.SHUT_WR)
    except (ConnectionError, TimeoutError, BlockingIOError):
        pass  # the client is gone, or not reading (a non-blocking socket): give up
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise


def finish_tls(tls: ssl.SSLSocket) -> None:
    """A handler has returned: our end of data (``end_tls``, unless it ended its output
    itself), then the client's (``linger``); the caller closes the socket."""
    end_tls(tls)
    if tls.fileno() >= 0 and getattr(tls, "_sslobj", None) is not None:
        linger(tls)
