"""TLS: the server's SSLContext, and the UCSPI-SSL environment of an exec'd program.

Imported only when ``--tls-cert`` is given (``ssl`` costs the parent memory every
child maps). The context is loaded once, in the parent, at start-up and on SIGHUP;
each child inherits it and runs its own handshake (see ``_edge``).

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
"""

from __future__ import annotations

import ssl

from forkserve._errors import TLSConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SSL_NAMES = (
    "SSL_PROTOCOL",
    "SSL_CIPHER",
    "SSL_CIPHER_USEKEYSIZE",
    "SSL_TLS_SNI",
    "SSL_CLIENT_S_DN",
    "SSL_CLIENT_S_DN_CN",
    "SSL_CLIENT_I_DN",
    "SSL_CLIENT_M_SERIAL",
    "SSL_CLIENT_V_START",
    "SSL_CLIENT_V_END",
)


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
