"""A service that cannot start says why in one sentence and exits non-zero."""

from __future__ import annotations

import os
import socket

import pytest

from llmos.ports import free_port
from llmos.services import SERVICE_MODULES
from tests.conftest import run_python


@pytest.mark.parametrize("service", list(SERVICE_MODULES))
def test_bad_configuration_exits_2_naming_the_variable(service: str) -> None:
    env = {**os.environ, "LLMOS_LISTEN_ADDR": "nowhere", "LLMOS_SHUTDOWN_GRACE_S": "soon"}
    result = run_python(["-m", SERVICE_MODULES[service]], env)
    assert result.returncode == 2
    assert f"llmos {service}: configuration error" in result.stderr
    assert "LLMOS_LISTEN_ADDR='nowhere' is invalid: expected HOST:PORT" in result.stderr
    assert "LLMOS_SHUTDOWN_GRACE_S='soon' is invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_redis_fails_after_the_connect_timeout() -> None:
    env = {
        **os.environ,
        "LLMOS_REDIS_URL": f"redis://:topsecret@127.0.0.1:{free_port()}/0",
        "LLMOS_CONNECT_TIMEOUT_S": "1",
        "LLMOS_LISTEN_ADDR": "127.0.0.1:0",
    }
    result = run_python(["-m", "services.scheduler"], env)
    assert result.returncode == 1
    assert "cannot reach Redis within 1s" in result.stderr
    assert "topsecret" not in result.stderr


def test_port_in_use_fails_with_the_address(service_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**service_env, "LLMOS_LISTEN_ADDR": f"127.0.0.1:{port}"}
        result = run_python(["-m", "services.audit"], env)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
