"""Exec mode over TLS: the child keeps the TLS socket and relays plain bytes.

A program cannot speak TLS on fd 0 and 1 itself, so, as stunnel and s6-tlsserver
do, the connection's child forks the program with one end of a socketpair on its fd
0 and 1 and relays between the pair and the TLS connection, both ways at once,
never blocking on one direction while the other could move:

- the client's end of data (close_notify, or a bare FIN) becomes shutdown(SHUT_WR)
  on the pair: the program reads EOF and may still answer;
- the program's end of output (it closed fd 1, or exited) becomes a TLS close_notify
  and a FIN to the client, which may still send (a half-close);
- the relay ends when both directions are done, or the program is gone and its
  output delivered; then it reaps the program and exits with its status, so the
  parent's ``end`` line reports the program's exit code or signal.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import ssl

from forkserve._exec import reset_process

CHUNK = 64 * 1024
# Stop reading a side while this much is waiting for the other: backpressure.
BUFFER_LIMIT = 256 * 1024


def run_relayed(
    tls: ssl.SSLSocket, path: str, argv: list[str], env: dict[str, str], log_fd: int
) -> int:
    """Fork ``path`` on a socketpair, relay it to ``tls``, and return its status.

    Resource handling: closes ``tls``. The program is reaped before returning.
    """
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        status = 111
        try:
            os.close(tls.fileno())
            os.close(ours.fileno())
            reset_process(theirs, log_fd)
            os.execve(path, argv, env)  # noqa: S606 - no shell, by design
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            os.write(log_fd, f"exec-failed program={path} error={name}\n".encode())
        finally:
            os._exit(status)
    theirs.close()
    # The parent's SIGTERM reaches the whole process group; the relay keeps going so
    # the program's last output still gets out.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pidfd = os.pidfd_open(pid)
    try:
        Relay(tls, ours).run(pidfd)
    finally:
        os.close(pidfd)
        ours.close()
        tls.close()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    return os.waitstatus_to_exitcode(status)


class Relay:
    """Non-blocking copy between a TLS socket and a plain one, with half-close."""

    def __init__(self, tls: ssl.SSLSocket, plain: socket.socket) -> None:
        self.tls, self.plain = tls, plain
        self.to_plain = bytearray()
        self.to_tls = bytearray()
        self.tls_in = True  # the client may still send
        self.plain_in = True  # the program may still send
        self.plain_out = True  # the program still takes input
        self.tls_out = True  # we may still send to the client
        tls.setblocking(False)
        plain.setblocking(False)

    def run(self, pidfd: int = -1) -> None:
        """Relay until both directions are done (or the program has exited and its
        output is delivered). ``pidfd`` (pidfd_open(2)) tells when the program exits."""
        with selectors.DefaultSelector() as sel:
            if pidfd >= 0:
                sel.register(pidfd, selectors.EVENT_READ)
            while self.tls_out or (self.tls_in and self.plain_out):
                tls_read = self.tls_in and len(self.to_plain) < BUFFER_LIMIT
                plain_read = self.plain_in and len(self.to_tls) < BUFFER_LIMIT
                watch(sel, self.tls, tls_read, bool(self.to_tls))
                watch(sel, self.plain, plain_read, bool(self.to_plain))
                if self.tls_in and self.tls.pending():
                    self.from_tls()  # decrypted bytes OpenSSL holds: no event will come
                else:
                    for key, _ in sel.select():
                        if key.fileobj is self.tls:
                            self.from_tls()
                        elif key.fileobj is self.plain:
                            self.from_plain()
                        else:  # the program exited: what it wrote is still readable
                            sel.unregister(pidfd)
                            self.plain_out = False
                            self.to_plain.clear()
                self.flush()

    def from_tls(self) -> None:
        """Read what the client sent, draining OpenSSL's own buffer too."""
        while self.tls_in and len(self.to_plain) < BUFFER_LIMIT:
            try:
                data = self.tls.recv(CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except ssl.SSLEOFError:  # a FIN without close_notify: still an end of data
                data = b""
            except (ConnectionResetError, ssl.SSLError):
                data = b""
                self.tls_out = False
                self.to_tls.clear()
            if not data:
                self.tls_in = False
                return
            if self.plain_out:
                self.to_plain += data

    def from_plain(self) -> None:
        while self.plain_in and len(self.to_tls) < BUFFER_LIMIT:
            try:
                data = self.plain.recv(CHUNK)
            except BlockingIOError:
                return
            except ConnectionResetError:
                data = b""
            if not data:
                self.plain_in = False
                return
            if self.tls_out:
                self.to_tls += data

    def flush(self) -> None:
        """Write what can be written; pass on each end of data once its buffer is empty."""
        while self.to_plain and self.plain_out:
            try:
                del self.to_plain[: self.plain.send(self.to_plain)]
            except BlockingIOError:
                break
            except (BrokenPipeError, ConnectionResetError):
                self.plain_out = False  # the program stopped reading: drop its input
                self.to_plain.clear()
        if not self.tls_in and not self.to_plain and self.plain_out:
            self.plain_out = False
            shutdown(self.plain)
        while self.to_tls and self.tls_out:
            try:
                del self.to_tls[: self.tls.send(self.to_tls[:CHUNK])]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                break
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                self.tls_out = False
                self.to_tls.clear()
        if not self.plain_in and not self.to_tls and self.tls_out:
            self.tls_out = False
            self.close_notify()

    def close_notify(self) -> None:
        """End our direction: TLS close_notify (once the peer is done) and a FIN.

        While the peer may still send, only the FIN goes: CPython's shutdown() calls
        SSL_shutdown a second time, which reads on and throws away the peer's
        application data. The peer sees a bare FIN, which forkserve's server context
        (OP_IGNORE_UNEXPECTED_EOF) and Python's clients (suppress_ragged_eofs) read
        as the end of data.
        """
        if not self.tls_in:
            try:
                self.tls._sslobj.shutdown()  # type: ignore[attr-defined]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLError, OSError):
                pass  # close_notify is out; nothing more is read
        dup = socket.socket(fileno=os.dup(self.tls.fileno()))
        try:
            dup.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
        finally:
            dup.close()


def watch(sel: selectors.BaseSelector, sock: socket.socket, read: bool, write: bool) -> None:
    """Make ``sel`` watch ``sock`` for exactly these events (none: not at all)."""
    events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
    registered = sock in sel.get_map()
    if events and registered:
        sel.modify(sock, events)
    elif events:
        sel.register(sock, events)
    elif registered:
        sel.unregister(sock)


def shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
