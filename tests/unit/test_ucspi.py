"""The UCSPI environment builder: tcpserver6's and s6's variables, from socket addresses."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkserve.core.ucspi import (
    TLS_NAMES,
    UCSPI_NAMES,
    endpoint,
    inherited_environment,
    ucspi_environment,
    unix_environment,
)

ports = st.integers(min_value=0, max_value=65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = (
    st.ip_addresses(v=6)
    .map(lambda a: ipaddress.IPv6Address(int(a)))
    .filter(lambda a: a.ipv4_mapped is None)
    .map(str)
)


def build(local: object, remote: object, connnum: int = 1, **kwargs: object) -> dict[str, str]:
    return ucspi_environment({}, endpoint(local), endpoint(remote), connnum=connnum, **kwargs)  # type: ignore[arg-type]


def test_ipv4_connection_as_tcpserver6_writes_it() -> None:
    env = build(("127.0.0.1", 9000), ("10.1.2.3", 40000))
    assert env == {
        "PROTO": "TCP",
        "TCPLOCALIP": "127.0.0.1",
        "TCPLOCALPORT": "9000",
        "TCPREMOTEIP": "10.1.2.3",
        "TCPREMOTEPORT": "40000",
        "TCPCONNNUM": "0",
        "TCP6LOCALIP": "::ffff:127.0.0.1",
        "TCP6LOCALPORT": "9000",
        "TCP6REMOTEIP": "::ffff:10.1.2.3",
        "TCP6REMOTEPORT": "40000",
        "TCP6CONNNUM": "0",
    }


def test_ipv6_connection() -> None:
    env = build(("::1", 9000, 0, 0), ("2001:db8::7", 40000, 0, 0), connnum=3)
    assert env["PROTO"] == "TCP6"
    assert env["TCPLOCALIP"] == env["TCP6LOCALIP"] == "::1"
    assert env["TCPREMOTEIP"] == env["TCP6REMOTEIP"] == "2001:db8::7"
    assert env["TCPCONNNUM"] == "2"  # s6: connections already open, not this one
    assert "TCP6INTERFACE" not in env


def test_ipv4_mapped_client_of_a_dual_stack_listener_is_ipv4() -> None:
    env = build(("::ffff:127.0.0.1", 9000, 0, 0), ("::ffff:192.0.2.9", 5, 0, 0))
    assert env["PROTO"] == "TCP"
    assert env["TCPLOCALIP"] == "127.0.0.1"
    assert env["TCPREMOTEIP"] == "192.0.2.9"
    assert env["TCP6REMOTEIP"] == "::ffff:192.0.2.9"


def test_link_local_scope_becomes_tcp6interface() -> None:
    env = build(("fe80::1%eth0", 9000, 0, 2), ("fe80::2%eth0", 5, 0, 2))
    assert env["TCPREMOTEIP"] == "fe80::2"
    assert env["TCP6INTERFACE"] == "eth0"


def test_host_names_only_when_given() -> None:
    env = build(("127.0.0.1", 1), ("127.0.0.1", 2))
    assert not {"TCPLOCALHOST", "TCPREMOTEHOST", "TCPREMOTEINFO"} & env.keys()
    env = build(("127.0.0.1", 1), ("127.0.0.1", 2), local_host="me", remote_host="you")
    assert env["TCPLOCALHOST"] == env["TCP6LOCALHOST"] == "me"
    assert env["TCPREMOTEHOST"] == env["TCP6REMOTEHOST"] == "you"


def test_stale_inherited_names_go_and_others_stay() -> None:
    base = {name: "stale" for name in UCSPI_NAMES} | {"PATH": "/bin", "TCPTIMEOUT": "9"}
    env = ucspi_environment(base, endpoint(("127.0.0.1", 1)), endpoint(("127.0.0.1", 2)), connnum=1)
    assert "stale" not in env.values()
    assert env["PATH"] == "/bin"
    assert env["TCPTIMEOUT"] == "9"  # not a UCSPI name: a rules file's, say
    assert base["TCPREMOTEHOST"] == "stale"  # the input is not modified


def test_an_environment_filtered_once_gives_the_same_result() -> None:
    """The supervisor filters its environment once (parent.spawn) and passes it on
    with ``inherited=True``: the same environment as filtering it each time."""
    base = {name: "stale" for name in UCSPI_NAMES} | {"PATH": "/bin", "SSL_CLIENT_S_DN": "x"}
    ends = endpoint(("127.0.0.1", 1)), endpoint(("127.0.0.1", 2))
    once = inherited_environment(base)
    assert once == {"PATH": "/bin"}
    each = ucspi_environment(base, *ends, connnum=2, extra={"A": "1"})
    assert ucspi_environment(once, *ends, connnum=2, extra={"A": "1"}, inherited=True) == each
    assert once == {"PATH": "/bin"}  # not modified: the next connection uses it again


def test_stale_tls_names_go_and_openssl_configuration_stays() -> None:
    stale = {name: "stale" for name in TLS_NAMES} | {
        "SSL_CLIENT_S_DN": "CN=mallory",
        "SSL_CLIENT_CERT": "-----BEGIN",
        "SSL_SERVER_S_DN": "CN=old",
    }
    kept = {"SSL_CERT_FILE": "/etc/ssl/ca.pem", "SSL_CERT_DIR": "/etc/ssl/certs", "SSLX": "1"}
    env = ucspi_environment(
        stale | kept, endpoint(("127.0.0.1", 1)), endpoint(("127.0.0.1", 2)), connnum=1
    )
    assert not stale.keys() & env.keys()
    assert kept.items() <= env.items()


def test_extra_variables_come_last_and_win() -> None:
    env = build(("127.0.0.1", 1), ("127.0.0.1", 2), extra={"RELAYCLIENT": "", "PROTO": "X"})
    assert env["RELAYCLIENT"] == ""
    assert env["PROTO"] == "X"


@pytest.mark.parametrize("bad", [None, "unix-path", ("", 1), (b"1.2.3.4", 1), ("1.2.3.4",)])
def test_non_ip_addresses_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="not an IP socket address"):
        endpoint(bad)


@given(local=ipv4, remote=ipv4, lport=ports, rport=ports, connnum=st.integers(1, 10**6))
def test_any_ipv4_pair(local: str, remote: str, lport: int, rport: int, connnum: int) -> None:
    env = build((local, lport), (remote, rport), connnum)
    assert env["PROTO"] == "TCP"
    assert (env["TCPLOCALIP"], env["TCPLOCALPORT"]) == (local, str(lport))
    assert (env["TCPREMOTEIP"], env["TCPREMOTEPORT"]) == (remote, str(rport))
    mapped = ipaddress.IPv6Address(env["TCP6REMOTEIP"]).ipv4_mapped
    assert str(mapped) == remote
    assert env["TCPCONNNUM"] == str(connnum - 1)


@given(local=ipv6, remote=ipv6, lport=ports, rport=ports)
def test_any_ipv6_pair_in_canonical_form(local: str, remote: str, lport: int, rport: int) -> None:
    env = build((local, lport, 0, 0), (remote, rport, 0, 0))
    assert env["PROTO"] == "TCP6"
    assert env["TCPREMOTEIP"] == env["TCP6REMOTEIP"] == remote
    assert env["TCPREMOTEIP"] == str(ipaddress.IPv6Address(env["TCPREMOTEIP"]))
    assert env["TCPLOCALIP"] == local


@given(remote=st.ip_addresses(v=4), port=ports)
def test_mapped_and_plain_ipv4_give_the_same_environment(
    remote: ipaddress.IPv4Address, port: int
) -> None:
    plain = build(("127.0.0.1", 1), (str(remote), port))
    mapped = build(("::ffff:127.0.0.1", 1, 0, 0), (f"::ffff:{remote}", port, 0, 0))
    assert plain == mapped


@given(st.dictionaries(st.text(min_size=1).filter(lambda k: "=" not in k), st.text()))
def test_every_variable_set_is_a_ucspi_name_or_inherited(base: dict[str, str]) -> None:
    env = ucspi_environment(base, endpoint(("::1", 1)), endpoint(("::1", 2)), connnum=1)
    for name, value in env.items():
        assert name in UCSPI_NAMES or base[name] == value


def test_unix_connection_as_unixserver_writes_it() -> None:
    base = {
        "PATH": "/bin",
        "TCPREMOTEIP": "192.0.2.1",  # from a tcpserver that started forkserve
        "UNIXREMOTEPID": "1",
        "PROTO": "TCP",
        "SSL_CLIENT_S_DN": "stale",
    }
    env = unix_environment(
        base, "/run/x.sock", (10, 20, 30), (4242, 1000, 100), extra={"ROLE": "ops"}
    )
    assert env == {
        "PATH": "/bin",
        "PROTO": "UNIX",
        "UNIXLOCALPATH": "/run/x.sock",
        "UNIXLOCALPID": "10",
        "UNIXLOCALUID": "20",
        "UNIXLOCALGID": "30",
        "UNIXREMOTEPID": "4242",
        "UNIXREMOTEEUID": "1000",
        "UNIXREMOTEEGID": "100",
        "ROLE": "ops",
    }
    assert set(env) - {"PATH", "ROLE"} <= UCSPI_NAMES
    assert base["UNIXREMOTEPID"] == "1"  # not modified


def test_a_tcp_program_never_sees_a_stale_unix_name() -> None:
    env = ucspi_environment(
        {"UNIXREMOTEEUID": "0"}, endpoint(("127.0.0.1", 1)), endpoint(("127.0.0.1", 2)), connnum=1
    )
    assert "UNIXREMOTEEUID" not in env
