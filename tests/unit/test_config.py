"""Configuration: typed values, defaults, and failures that name the variable."""

from __future__ import annotations

import pytest

from llmos.config import (
    ConfigError,
    HostPort,
    Secret,
    load_service_settings,
    parse_host_port,
)


def test_defaults_are_usable_without_any_environment() -> None:
    settings = load_service_settings("gateway", {})
    assert settings.listen == HostPort("127.0.0.1", 50051)
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.log_level == "info"
    assert settings.data_dir.name == "var"


def test_values_are_read_and_typed() -> None:
    settings = load_service_settings(
        "scheduler",
        {
            "LLMOS_LISTEN_ADDR": "0.0.0.0:7000",
            "LLMOS_SHUTDOWN_GRACE_S": "2.5",
            "LLMOS_LOG_LEVEL": "DEBUG",
            "LLMOS_ADVERTISE_HOST": "scheduler.internal",
        },
    )
    assert settings.listen == HostPort("0.0.0.0", 7000)
    assert settings.shutdown_grace_s == 2.5
    assert settings.log_level == "debug"
    assert settings.advertise_host == "scheduler.internal"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LLMOS_LISTEN_ADDR", "no-port", "expected HOST:PORT"),
        ("LLMOS_LISTEN_ADDR", "host:99999", "outside 0-65535"),
        ("LLMOS_SHUTDOWN_GRACE_S", "soon", "could not convert"),
        ("LLMOS_SHUTDOWN_GRACE_S", "-1", "between 0 and 600"),
        ("LLMOS_LOG_LEVEL", "loud", "one of debug, info, warning, error"),
        ("LLMOS_NATS_URL", "http://x", "nats://"),
    ],
)
def test_bad_value_fails_naming_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_service_settings("audit", {variable: value})
    assert variable in str(caught.value)
    assert expected in str(caught.value)


def test_every_bad_variable_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_service_settings("storage", {"LLMOS_LOG_LEVEL": "x", "LLMOS_HEARTBEAT_S": "0"})
    assert "LLMOS_LOG_LEVEL" in str(caught.value)
    assert "LLMOS_HEARTBEAT_S" in str(caught.value)


def test_a_bad_url_with_a_password_never_echoes_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_service_settings("gateway", {"LLMOS_REDIS_URL": "http://:hunter2@db:6379"})
    assert "LLMOS_REDIS_URL" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_secrets_do_not_print() -> None:
    settings = load_service_settings("gateway", {"LLMOS_REDIS_URL": "redis://:hunter2@db:6379/0"})
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(Secret("hunter2"))
    assert settings.redis_url.reveal() == "redis://:hunter2@db:6379/0"


def test_ipv6_host_port_round_trips() -> None:
    address = parse_host_port("[::1]:50051")
    assert address == HostPort("::1", 50051)
    assert str(address) == "[::1]:50051"
