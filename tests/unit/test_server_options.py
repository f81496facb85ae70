"""The Server API's checks of the access, time and privilege arguments."""

from __future__ import annotations

from typing import Any

import pytest

from forkserve import Server, UsageError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rules": ["10.0.0.0/8:deny", "10.0.0.1/8:allow"]}, "rules line 2: "),
        ({"rules": "10.0.0.0/8:deny"}, "a list of rule lines"),
        ({"default_policy": "maybe"}, "'allow' or 'deny'"),
        ({"per_ip": -1}, "per_ip"),
        ({"rate": (0, 1.0)}, "rate"),
        ({"ipv6_prefix": 129}, "ipv6_prefix"),
        ({"idle_timeout": -1.0}, "idle_timeout"),
        ({"max_lifetime": float("nan")}, "max_lifetime"),
        ({"rlimits": {"stack": 1}}, "rlimits"),
        ({"user": "no-such-user-here"}, "no such user"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Server(("127.0.0.1", 0), **kwargs)


def test_rule_lines_build_a_gate() -> None:
    with Server(("127.0.0.1", 0), rules=["127.0.0.2:deny", ":allow,A=1"]) as server:
        rules = server.policy.gate.rules
        assert rules is not None
        assert [rule.label for rule in rules.rules] == ["rules:1", "rules:2"]
        assert rules.match(0xFFFF7F000003).env == {"A": "1"}


def test_settings_and_keywords_together() -> None:
    from forkserve.config.values import Settings

    given = Settings(mode="prefork", max_workers=4, min_spare=1, max_spare=2)
    with Server(("127.0.0.1", 0), settings=given, grace=2.5) as server:
        assert server.settings.pool == (1, 2, 4, 0)
        assert server.settings.grace == 2.5
    assert given.grace == 10.0  # the caller's settings are not changed
    with pytest.raises(TypeError, match="'colour'"):
        Server(("127.0.0.1", 0), colour="blue")  # type: ignore[call-arg]
    with pytest.raises(UsageError, match="max_workers"):
        Server(("127.0.0.1", 0), settings=given, min_spare=5)
