"""``forkserve client HOST PORT`` (or ``unix:PATH``): the seed's line client, correct.

Sends standard input to the server and writes what comes back to standard output as
it arrives, both ways at once, binary-safe (no line handling at all: bytes in, bytes
out). At end of input it half-closes (shutdown SHUT_WR) and keeps printing until the
server closes. Reading and writing at the same time matters: a client that writes
everything before reading deadlocks against an echo server once both socket buffers
fill (the seed's client also assumed one read returns one reply).

Exit codes: 0 when the server closed the connection cleanly; 100 for usage errors and
names that do not resolve; 111 for a refused, reset or timed-out connection.
"""

from __future__ import annotations

import argparse
import errno
import os
import selectors
import socket

from forkserve._errors import AddressError, TemporaryError, UsageError
from forkserve.core.address import check_host, is_unix_address, parse_port, parse_unix_address

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl

CHUNK = 64 * 1024
# Stop reading stdin while this much is waiting to be sent: backpressure, not memory.
OUTBUF_LIMIT = 1024 * 1024
DEFAULT_TIMEOUT = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from forkserve.cli.args import seconds

    add_target_arguments(parser)
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up connecting after this long, and, once input has ended, give up "
        "when the server sends nothing for this long (default %(default)g; 0 = no limit)",
    )
    add_edge_arguments(parser)


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """``HOST PORT`` or ``unix:PATH``: shared by ``client`` and ``bench``."""
    parser.add_argument(
        "host",
        help="server host name or address (IPv6 without brackets), or a Unix socket: "
        "unix:PATH, unix:@NAME",
    )
    parser.add_argument("port", nargs="?", help="server port (none for a Unix socket)")


def unix_target(args: argparse.Namespace) -> str | bytes | None:
    """The AF_UNIX address ``unix:PATH``/``unix:@NAME`` names; None for HOST PORT.

    Raises:
        UsageError: a Unix address with a PORT, a HOST without one, or --proxy (which
            names TCP addresses) or --tls without --insecure (no host name to verify)
            on a Unix socket.
    """
    if not is_unix_address(args.host):
        if args.port is None:
            raise UsageError("the PORT is missing (HOST PORT, or unix:PATH)")
        return None
    if args.port is not None:
        raise UsageError(f"{args.host} is a Unix socket: it takes no PORT")
    if args.proxy:
        raise UsageError("--proxy names TCP addresses: not over a Unix socket")
    if args.tls and not args.insecure:
        raise UsageError("--tls over a Unix socket needs --insecure: no host name to verify")
    return parse_unix_address(args.host)


def add_edge_arguments(parser: argparse.ArgumentParser) -> None:
    """``--proxy`` and ``--tls``: shared by ``client`` and ``bench``."""
    parser.add_argument(
        "--proxy",
        choices=("v1", "v2"),
        help="send a PROXY header first, naming this connection's own addresses",
    )
    parser.add_argument("--tls", action="store_true", help="speak TLS (after any PROXY header)")
    parser.add_argument("--tls-ca", metavar="PEM", help="verify the server against these CAs")
    parser.add_argument(
        "--insecure", action="store_true", help="with --tls: do not verify the server"
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="with --tls: a client certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="the key of --tls-cert")


def client_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client's SSLContext for ``--tls``, or None.

    Raises:
        UsageError: TLS options without ``--tls``, or files that do not load.
    """
    if not args.tls:
        if args.tls_ca or args.insecure or args.tls_cert:
            raise UsageError("--tls-ca, --insecure and --tls-cert need --tls")
        return None
    import ssl

    context = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else None
    try:
        if context is None:
            context = ssl.create_default_context()
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if args.tls_cert:
            context.load_cert_chain(args.tls_cert, args.tls_key)
    except OSError as exc:
        raise UsageError(f"cannot load TLS files: {exc.strerror or exc}") from None
    return context


def start_edge(
    sock: socket.socket, proxy: str | None, context: ssl.SSLContext | None, host: str
) -> socket.socket:
    """Send the PROXY header (our real addresses), then run the TLS handshake.

    Raises:
        TemporaryError: the handshake failed.
    """
    if proxy:
        from forkserve.core.proxynet import encode_v1, encode_v2

        encode = encode_v1 if proxy == "v1" else encode_v2
        sock.sendall(encode(sock.getsockname()[:2], sock.getpeername()[:2]))
    if context is None:
        return sock
    import ssl

    try:
        # A FIN without close_notify raises (SSLEOFError), for the relay to report.
        hostname = None if sock.family == socket.AF_UNIX else host
        return context.wrap_socket(sock, server_hostname=hostname, suppress_ragged_eofs=False)
    except ssl.SSLError as exc:
        raise TemporaryError(f"TLS handshake failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise TemporaryError(f"TLS handshake failed: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    host = args.host[1:-1] if args.host.startswith("[") and args.host.endswith("]") else args.host
    unix = unix_target(args)
    if unix is None:
        check_host(host)
    context = client_context(args)
    if unix is None:
        sock = connect(host, parse_port(args.port), args.timeout or None)
    else:
        sock = connect_unix(unix, args.host, args.timeout or None)
    with sock:
        served = start_edge(sock, args.proxy, context, host)
        if served is sock:
            relay(sock, 0, 1, args.timeout or None)
        else:
            relay_tls(served, args.timeout or None)
    return 0


def relay_tls(tls: socket.socket, timeout: float | None) -> None:
    """``relay`` over TLS: a thread moves bytes between the TLS socket and a
    socketpair (with half-close, see child.relay), and ``relay`` serves the pair.

    Raises:
        TemporaryError: as ``relay``; or the TLS connection failed (a reset) or ended
            without close_notify: what came before it is out, but it may be cut
            short, and the exit status must say so (111, not 0).
    """
    import threading

    from forkserve.child.relay import Relay

    ours, theirs = socket.socketpair()
    bridge = Relay(tls, ours)  # type: ignore[arg-type]
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    try:
        with theirs:
            relay(theirs, 0, 1, timeout)
    finally:
        thread.join(timeout)
        ours.close()
    if bridge.failure is not None:  # set before the pair's EOF that ended relay()
        raise TemporaryError(bridge.failure)


def connect(host: str, port: int, timeout: float | None) -> socket.socket:
    """Connect to the first address of ``host`` that accepts.

    Raises:
        AddressError: the name does not resolve.
        TemporaryError: refused, unreachable or timed out.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise AddressError(f"cannot resolve {host!r}: {exc.strerror}") from None
    except TimeoutError:
        raise TemporaryError(f"timed out connecting to {where}") from None
    except OSError as exc:
        raise TemporaryError(f"cannot connect to {where}: {exc.strerror}") from None


def connect_unix(address: str | bytes, text: str, timeout: float | None) -> socket.socket:
    """Connect to a Unix socket (``text``: its ``unix:`` address, for errors).

    Raises:
        TemporaryError: refused (nobody listens), no such file, no permission, or
            timed out.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except TimeoutError:
        sock.close()
        raise TemporaryError(f"timed out connecting to {text}") from None
    except OSError as exc:
        sock.close()
        raise TemporaryError(f"cannot connect to {text}: {exc.strerror}") from None
    return sock


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def relay(sock: socket.socket, in_fd: int, out_fd: int, timeout: float | None) -> None:
    """Copy ``in_fd`` to ``sock`` and ``sock`` to ``out_fd`` until the server closes.

    Raises:
        TemporaryError: the connection was reset, or the server went silent for
            ``timeout`` seconds after input ended.
    """
    sock.setblocking(False)
    outbuf = bytearray()
    input_open = True
    # poll(2), not epoll: standard input may be a regular file, which epoll refuses.
    with selectors.PollSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        while True:
            reading = input_open and len(outbuf) < OUTBUF_LIMIT
            _watch(sel, in_fd, reading)
            sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if outbuf else 0))
            events = sel.select(None if input_open else timeout)
            if not events:
                raise TemporaryError(f"timed out: nothing from the server for {timeout:g}s")
            for key, mask in events:
                if key.fileobj is not sock:
                    data = os.read(in_fd, CHUNK)
                    outbuf += data
                    if not data:
                        input_open = False
                        if not outbuf:
                            half_close(sock)
                    continue
                if mask & selectors.EVENT_READ and not receive(sock, out_fd):
                    return
                if mask & selectors.EVENT_WRITE:
                    del outbuf[: send(sock, outbuf)]
                    if not outbuf and not input_open:
                        half_close(sock)


def _watch(sel: selectors.BaseSelector, fd: int, reading: bool) -> None:
    """Register ``fd`` for reading, or not, to match ``reading``."""
    registered = fd in sel.get_map()
    if reading and not registered:
        sel.register(fd, selectors.EVENT_READ)
    elif registered and not reading:
        sel.unregister(fd)


def half_close(sock: socket.socket) -> None:
    """End of input: shutdown(SHUT_WR), so the server sees EOF and can finish."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:  # the server reset the connection first
            raise TemporaryError("connection reset by the server") from None
        raise


def receive(sock: socket.socket, out_fd: int) -> bool:
    """Copy what arrived to ``out_fd``; False once the server has closed."""
    try:
        data = sock.recv(CHUNK)
    except BlockingIOError:
        return True
    except ConnectionResetError:
        raise TemporaryError("connection reset by the server") from None
    if not data:
        return False
    write_all(out_fd, data)
    return True


def send(sock: socket.socket, data: bytearray) -> int:
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0
    except (BrokenPipeError, ConnectionResetError):
        raise TemporaryError("connection reset by the server") from None
    except OSError as exc:
        if exc.errno == errno.ETIMEDOUT:
            raise TemporaryError("connection timed out") from None
        raise
