"""Exec mode over TLS: the child keeps the TLS socket and relays plain bytes.

A program cannot speak TLS on fd 0 and 1 itself, so, as stunnel and s6-tlsserver
do, the connection's child forks the program with one end of a socketpair on its fd
0 and 1 and relays between the pair and the TLS connection, both ways at once,
never blocking on one direction while the other could move:

- the client's end of data (close_notify, or a bare FIN) becomes shutdown(SHUT_WR)
  on the pair, once every byte the client sent before it has reached the program:
  the program reads EOF and may still answer;
- the program's end of output (it shut down or closed its socket, or exited) becomes
  a TLS close_notify and a FIN to the client, once every byte the program wrote
  before it has gone out; the client may still send (a half-close), and what it
  sends still reaches the program (``child.tls.close_notify`` says how);
- the relay ends when both directions are done, or the program is gone and its
  output delivered; then it reaps the program and exits with its status, so the
  parent's ``end`` line reports the program's exit code or signal. Done means the
  client's end of data too: until it comes, what the client sends is read and
  dropped (a lingering close, bounded: ``child.linger.LINGER``), since closing with the
  client's bytes unread, or still to come, makes the kernel reset the connection
  and throw away the output it had not delivered yet.

``forkserve client --tls`` runs the same relay between its TLS connection and the
socketpair its plain loop serves: "TLS side" and "plain side" name the roles.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import ssl
import time

from forkserve.child.fresh import reset_process
from forkserve.child.linger import LINGER, LINGER_IDLE, unacknowledged
from forkserve.child.tls import close_notify
from forkserve.core.errnames import errno_name

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
            name = errno_name(exc.errno)
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
    """Non-blocking copy between a TLS socket and a plain one, both ways, with half-close.

    Each direction is a buffer and two flags, and moves in order: read while the
    buffer has room, write what it holds, and pass the end of data on only once the
    buffer is empty, so nothing read is ever dropped while its reader still takes
    it. OpenSSL may hold decrypted bytes that no poll on the socket announces
    (``pending()``): the loop reads them without waiting. The end towards the plain
    side is shutdown(SHUT_WR); towards the TLS side, close_notify written raw and
    then a FIN (``end_tls``), after which the TLS side's data is still read.
    """

    def __init__(self, tls: ssl.SSLSocket, plain: socket.socket) -> None:
        self.tls, self.plain = tls, plain
        self.to_plain = bytearray()
        self.to_tls = bytearray()
        self.tls_sends = True  # no close_notify, FIN or failure from the TLS side yet
        self.tls_takes = True  # our close_notify and FIN not yet out, no failure
        self.plain_sends = True  # no EOF from the plain side yet
        self.plain_takes = True  # not yet shut down for writing, nor refused
        self.notify: bytes | None = None  # what is left of our close_notify record
        self.linger_until = self.quiet_until = 0.0  # set once all else is done
        # Why the TLS side's data ended otherwise than by close_notify (or, on the
        # server's side, a FIN), if it did: the plain side saw the same EOF.
        self.failure: str | None = None
        self.buffer = memoryview(bytearray(CHUNK))  # one SSL_read's decrypted bytes
        # What a TLS read or write waits for: OpenSSL may need the other one first.
        self.tls_read_waits = selectors.EVENT_READ
        self.tls_write_waits = selectors.EVENT_WRITE
        tls.setblocking(False)
        plain.setblocking(False)

    def run(self, pidfd: int = -1) -> None:
        """Relay until both directions are done, or the program has exited and its
        output is delivered. ``pidfd`` (pidfd_open(2)) tells when the program exits."""
        with selectors.DefaultSelector() as sel:
            if pidfd >= 0:
                sel.register(pidfd, selectors.EVENT_READ)
            while self.tls_takes or self.plain_takes or self.lingering():
                watch(sel, self.tls, self.tls_events())
                watch(sel, self.plain, self.plain_events())
                tls_ready = plain_ready = 0
                for key, mask in sel.select(self.timeout()):
                    if key.fileobj is self.tls:
                        tls_ready = mask
                    elif key.fileobj is self.plain:
                        plain_ready = mask
                    else:  # the program exited: what it wrote is still readable
                        sel.unregister(pidfd)
                        self.plain_takes = False
                        self.to_plain.clear()
                if tls_ready & self.tls_read_waits or self.tls_buffered():
                    self.from_tls()
                if plain_ready & selectors.EVENT_READ:
                    self.from_plain()
                # Writes are tried at once, without waiting for a poll to say so:
                # what was just read usually fits, and the ends are decided here.
                self.to_plain_side()
                self.to_tls_side()

    def lingering(self) -> bool:
        """Everything is done but the TLS side's end of data: wait for it, reading
        and dropping what comes, for at most ``LINGER``, or ``LINGER_IDLE`` of
        silence once the peer has acknowledged all we sent."""
        if not self.tls_sends:
            return False
        now = time.monotonic()
        if not self.linger_until:
            self.linger_until, self.quiet_until = now + LINGER, now + LINGER_IDLE
        if now >= self.linger_until:
            return False
        if now >= self.quiet_until:
            if not unacknowledged(self.tls):
                return False
            self.quiet_until = now + LINGER_IDLE
        return True

    def timeout(self) -> float | None:
        """How long the next poll may wait: not at all while OpenSSL holds bytes."""
        if self.tls_buffered():
            return 0
        if self.linger_until:
            return max(0.0, min(self.linger_until, self.quiet_until) - time.monotonic())
        return None

    def tls_events(self) -> int:
        events = 0
        if self.tls_sends and len(self.to_plain) < BUFFER_LIMIT:
            events |= self.tls_read_waits
        if self.tls_takes and (self.to_tls or self.notify):
            events |= self.tls_write_waits
        return events

    def plain_events(self) -> int:
        events = 0
        if self.plain_sends and len(self.to_tls) < BUFFER_LIMIT:
            events |= selectors.EVENT_READ
        if self.plain_takes and self.to_plain:
            events |= selectors.EVENT_WRITE
        return events

    def tls_buffered(self) -> bool:
        """Decrypted bytes wait in OpenSSL, and there is room for them: no poll
        would announce them."""
        room = self.tls_sends and len(self.to_plain) < BUFFER_LIMIT
        return room and self.tls.pending() > 0

    def from_tls(self) -> None:
        """Read what the TLS side sent, OpenSSL's own buffer included."""
        while self.tls_sends and len(self.to_plain) < BUFFER_LIMIT:
            try:
                n = self.tls.recv_into(self.buffer, CHUNK)
            except ssl.SSLWantReadError:
                self.tls_read_waits = selectors.EVENT_READ
                return
            except ssl.SSLWantWriteError:
                self.tls_read_waits = selectors.EVENT_WRITE
                return
            except ssl.SSLZeroReturnError:  # close_notify, once ours went first
                n = 0
            except ssl.SSLEOFError:
                # A FIN without close_notify (a client context: the server's ignores
                # it) still ends the plain side, but may be a cut: say so.
                self.failure = "the TLS connection ended without close_notify (cut short?)"
                n = 0
            except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
                self.tls_failed(exc)
                return
            if not n:
                self.tls_sends = False
                return
            if self.linger_until:  # the peer still talks: not silent
                self.quiet_until = time.monotonic() + LINGER_IDLE
            if self.plain_takes:
                self.to_plain += self.buffer[:n]

    def from_plain(self) -> None:
        while self.plain_sends and len(self.to_tls) < BUFFER_LIMIT:
            try:
                data = self.plain.recv(CHUNK)
            except BlockingIOError:
                return
            except ConnectionError:
                data = b""
            if not data:
                self.plain_sends = False
                return
            if self.tls_takes:
                self.to_tls += data

    def to_plain_side(self) -> None:
        """Write what the TLS side sent; then, at its end, shut the plain side down."""
        while self.to_plain and self.plain_takes:
            try:
                del self.to_plain[: self.plain.send(self.to_plain)]
            except BlockingIOError:
                return
            except ConnectionError:  # the program stopped reading: drop its input
                self.plain_takes = False
                self.to_plain.clear()
        if self.plain_takes and not self.tls_sends and not self.to_plain:
            self.plain_takes = False
            shutdown(self.plain)

    def to_tls_side(self) -> None:
        """Write what the plain side sent; then, at its end, close_notify and a FIN."""
        while self.to_tls and self.tls_takes:
            try:
                # A write OpenSSL could not finish is retried with the same bytes first.
                del self.to_tls[: self.tls.send(self.to_tls[:CHUNK])]
            except ssl.SSLWantWriteError:
                self.tls_write_waits = selectors.EVENT_WRITE
                return
            except ssl.SSLWantReadError:
                self.tls_write_waits = selectors.EVENT_READ
                return
            except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
                self.tls_failed(exc)
                return
        if self.tls_takes and not self.plain_sends and not self.to_tls:
            self.end_tls()

    def end_tls(self) -> None:
        """close_notify (made once, written raw as the socket takes it), then a FIN."""
        if self.notify is None:
            self.notify = close_notify(self.tls)
        while self.notify:
            try:
                self.notify = self.notify[os.write(self.tls.fileno(), self.notify) :]
            except BlockingIOError:
                self.tls_write_waits = selectors.EVENT_WRITE
                return
            except ConnectionError as exc:
                self.tls_failed(exc)
                return
        self.tls_takes = False
        shutdown(self.tls)

    def tls_failed(self, exc: OSError) -> None:
        """The TLS connection broke: nothing more comes or goes on it. What came
        before still reaches the plain side, and ``failure`` says why: unless the
        TLS side's data had ended cleanly already, nothing of it being lost then (a
        server that closed after its close_notify refuses what we still send)."""
        if self.tls_sends:
            reason = exc.strerror or getattr(exc, "reason", None) or type(exc).__name__
            self.failure = f"the TLS connection failed: {reason}"
        self.tls_sends = self.tls_takes = False
        self.to_tls.clear()


def watch(sel: selectors.BaseSelector, sock: socket.socket, events: int) -> None:
    """Make ``sel`` watch ``sock`` for exactly ``events`` (none: not at all)."""
    registered = sock in sel.get_map()
    if events and registered:
        sel.modify(sock, events)
    elif events:
        sel.register(sock, events)
    elif registered:
        sel.unregister(sock)


def shutdown(sock: socket.socket) -> None:
    """shutdown(SHUT_WR), the plain socket's own: on an SSLSocket, ``shutdown()``
    would drop the SSL object, and the TLS side's data is still to be read."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_WR)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
