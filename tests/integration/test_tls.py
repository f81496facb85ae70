"""TLS end to end, with certificates made by the openssl CLI for each test session."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from forkserve.core.proxynet import encode_v2
from tests.integration.conftest import ServerFactory, make_cert
from tests.support import WAIT, connect, recv_all, run_cli

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def tls_args(certs: dict[str, tuple[Path, Path]]) -> list[str]:
    cert, key = certs["server"]
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


def client_context(certs: dict[str, tuple[Path, Path]]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs["server"][0]))


def tls_connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    return context.wrap_socket(connect(port), server_hostname="127.0.0.1")


def test_python_client_echo_with_half_close(
    serve: ServerFactory, certs: dict[str, tuple[Path, Path]]
) -> None:
    server = serve(*tls_args(certs), "-v")
    payload = bytes(range(256)) * 400  # 100 KiB: fits the loopback socket buffers
    with tls_connect(server.port, client_context(certs)) as sock:
        # One thread per SSLSocket: OpenSSL objects are not safe to read and write
        # from two threads, so send everything, then half-close, then read.
        sock.sendall(payload)
        dup = socket.socket(fileno=os.dup(sock.fileno()))
        dup.shutdown(socket.SHUT_WR)
        dup.close()
        assert recv_all(sock) == payload
    (line,) = server.wait_event("tls")
    assert line["version"].startswith("TLSv1.")


def test_openssl_s_client_echo(
    start_server: ServerFactory, certs: dict[str, tuple[Path, Path]]
) -> None:
    server = start_server(*tls_args(certs))
    proc = subprocess.Popen(
        [
            *("openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{server.port}"),
            *("-CAfile", str(certs["server"][0]), "-verify_return_error"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"hello over tls\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"hello over tls\n"  # the echo, decrypted
    finally:
        proc.kill()
        proc.wait(WAIT)
        proc.stdin.close()
        proc.stdout.close()


def test_plaintext_and_stalled_clients_are_cut_without_stalling_others(
    serve: ServerFactory, certs: dict[str, tuple[Path, Path]]
) -> None:
    server = serve(*tls_args(certs), "--handshake-timeout", "0.5")
    with connect(server.port) as plain, connect(server.port) as stalled:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        with tls_connect(server.port, client_context(certs)) as good:
            good.sendall(b"ok")
            assert good.recv(10) == b"ok"
        for sock in (plain, stalled):  # both cut: EOF (after an alert) or a reset
            try:
                recv_all(sock)
            except ConnectionResetError:
                pass
    server.wait_event("reject", reason="tls")
    server.wait_event("timeout", kind="handshake")


SSL_ENV = ["sh", "-c", "env | grep ^SSL_ | LC_ALL=C sort"]
STALE_TLS = {
    "SSL_CLIENT_S_DN": "CN=mallory",
    "SSL_CLIENT_S_DN_CN": "mallory",
    "SSL_PROTOCOL": "stale",
    "SSL_TLS_SNI": "stale.example",
}
OPENSSL_OWN = {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt", "SSL_CERT_DIR": "/etc/ssl"}


@pytest.mark.parametrize("tls", [False, True])
def test_inherited_tls_variables_never_reach_a_program(
    start_server: ServerFactory, certs: dict[str, tuple[Path, Path]], tls: bool
) -> None:
    """Without TLS, or with TLS and no client certificate, a program sees no SSL_CLIENT_*
    (nor any other connection's TLS name) from forkserve's own environment; OpenSSL's
    SSL_CERT_FILE and SSL_CERT_DIR pass as they are."""
    env = {**os.environ, **STALE_TLS, **OPENSSL_OWN}
    server = start_server(*(tls_args(certs) if tls else []), "--", *SSL_ENV, env=env)
    with tls_connect(server.port, client_context(certs)) if tls else connect(server.port) as sock:
        text = recv_all(sock).decode()
    seen = dict(line.split("=", 1) for line in text.splitlines())
    assert OPENSSL_OWN.items() <= seen.items()
    assert "mallory" not in text
    assert "stale" not in text
    if tls:
        assert seen["SSL_PROTOCOL"].startswith("TLSv1.")


def end_of_data(sock: ssl.SSLSocket) -> bytes:
    """What arrives until the server's end of data: close_notify, or a bare FIN (which
    the default client context reports as SSLEOFError)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ssl.SSLEOFError:
        pass
    return data


def release(fifo: Path) -> None:
    """Write one line to ``fifo`` once its reader (the program) has it open, within
    WAIT: a blocking open would hang the test if the program never got there."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader yet
            assert exc.errno == errno.ENXIO, exc
            assert time.monotonic() < deadline, f"the program never opened {fifo}"
            time.sleep(0.01)  # polling a fifo for a reader: there is no event to wait on
            continue
        try:
            os.write(fd, b"\n")
        finally:
            os.close(fd)
        return


def test_a_program_ends_its_output_over_tls_by_closing_fd_0_and_1(
    start_server: ServerFactory, certs: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    """The relay's socketpair is on fd 0 and 1 both: closing fd 1 alone ends nothing;
    closing both (or exiting) is the end of the program's output."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    program = f"printf hi; exec 1>&-; read x < {fifo}; exec 0<&-; read x < {fifo}"
    server = start_server(*tls_args(certs), "--", "sh", "-c", program)
    with tls_connect(server.port, client_context(certs)) as sock:
        sock.settimeout(WAIT)
        assert sock.recv(2) == b"hi"
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # fd 1 closed, fd 0 open: nothing
        sock.settimeout(WAIT)
        release(fifo)  # now fd 0 too
        assert end_of_data(sock) == b""
        assert server.events("end") == []  # the program still runs
        release(fifo)
    server.wait_event("end", exit=0)


def test_exec_over_tls_relays_both_ways_with_half_close(
    start_server: ServerFactory, certs: dict[str, tuple[Path, Path]]
) -> None:
    program = ["sh", "-c", 'echo "$SSL_PROTOCOL $TCPREMOTEIP"; cat; echo done; exit 3']
    server = start_server(*tls_args(certs), "--", *program)
    with tls_connect(server.port, client_context(certs)) as sock:
        sock.sendall(b"a" * 100_000)
        raw = socket.socket(fileno=sock.fileno())  # half-close: FIN after close_notify
        try:
            sock.unwrap  # noqa: B018 - the attribute exists; unwrap would close reading
            raw_dup = raw.dup()
        finally:
            raw.detach()
        raw_dup.shutdown(socket.SHUT_WR)
        raw_dup.close()
        data = recv_all(sock)
    first, _, rest = data.partition(b"\n")
    assert first.split()[0].startswith(b"TLSv1.")
    assert first.split()[1] == b"127.0.0.1"
    assert rest == b"a" * 100_000 + b"done\n"
    (end,) = server.wait_event("end")
    assert end["exit"] == "3"


def test_client_certificates_and_proxy_before_tls(
    start_server: ServerFactory, certs: dict[str, tuple[Path, Path]]
) -> None:
    program = ["sh", "-c", 'echo "$SSL_CLIENT_S_DN_CN|$SSL_CLIENT_S_DN|$TCPREMOTEIP"']
    server = start_server(
        *tls_args(certs),
        "--tls-client-ca",
        str(certs["ca"][0]),
        "--proxy-protocol",
        "v2",
        "--",
        *program,
    )
    context = client_context(certs)
    context.load_cert_chain(*certs["client"])
    with connect(server.port) as raw:
        raw.sendall(encode_v2(("198.51.100.4", 1234), ("198.51.100.1", 443)))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert recv_all(sock) == b"alice|O=forkserve,CN=alice|198.51.100.4\n"
    with connect(server.port) as raw:  # no client certificate: refused
        raw.sendall(encode_v2(("198.51.100.4", 1234), ("198.51.100.1", 443)))
        sock = client_context(certs).wrap_socket(raw, server_hostname="127.0.0.1")
        with sock, pytest.raises((ssl.SSLError, ConnectionResetError)):
            sock.recv(10)  # TLS 1.3: the server's verdict arrives after the handshake
    server.wait_event("reject", reason="tls")


def test_forkserve_client_and_bench_over_tls(
    start_server: ServerFactory, certs: dict[str, tuple[Path, Path]]
) -> None:
    server = start_server(*tls_args(certs), "--proxy-protocol", "v1")
    ca = str(certs["server"][0])
    result = run_cli(
        ["client", "127.0.0.1", str(server.port), "--tls", "--tls-ca", ca, "--proxy", "v1"],
        input=b"x" * 200_000,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"x" * 200_000
    result = run_cli(
        [
            *("bench", "127.0.0.1", str(server.port), "--tls", "--insecure", "--proxy", "v1"),
            *("-m", "pingpong", "-d", "0.5", "-c", "2"),
        ],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_sighup_reloads_the_certificate(
    serve: ServerFactory, mode: str, certs: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(certs["server"][0], cert)
    shutil.copy(certs["server"][1], key)
    server = serve("--tls-cert", str(cert), "--tls-key", str(key))
    new_cert, new_key = make_cert(tmp_path, "localhost2")
    shutil.copy(new_cert, cert)
    shutil.copy(new_key, key)
    server.send_signal(signal.SIGHUP)
    server.wait_event("reload", what="tls")
    server.wait_event("reload", changed="none")  # applied (fork mode: the new forker ready)
    if mode != "fork":  # the 2 workers forked before the reload retire (this line
        # comes before the reload is applied: an old worker may still accept until then)
        server.wait_event("worker-exit", count=2, reason="stopped")
    context = ssl.create_default_context(cafile=str(new_cert))
    context.check_hostname = False
    for _ in range(3):  # prefork: any worker, old or new, must present the new one
        with tls_connect(server.port, context) as sock:
            sock.sendall(b"new")
            assert sock.recv(10) == b"new"
    cert.write_text("garbage")
    server.send_signal(signal.SIGHUP)
    server.wait_event("reload-failed", what="tls")
    with tls_connect(server.port, context) as sock:  # still serving the last good one
        sock.sendall(b"kept")
        assert sock.recv(10) == b"kept"


@pytest.mark.parametrize(
    "args",
    [
        ["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
        ["--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname"],
        ["--tls-cert", "/etc/hostname"],
        ["--tls-client-ca", "/etc/hostname"],
    ],
)
def test_bad_tls_options_exit_100(args: list[str]) -> None:
    result = run_cli(["serve", "127.0.0.1:0", *args])
    assert result.returncode == 100
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines


def test_bad_client_tls_options_exit_100() -> None:
    result = run_cli(["client", "127.0.0.1", "1", "--insecure"])
    assert result.returncode == 100
    assert len(result.stderr.decode().strip().splitlines()) == 1
