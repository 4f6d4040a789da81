"""Fixtures shared by every test: real infrastructure on free ports, stopped in `finally`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.devstack.infra import NatsServer, RedisServer, start_nats, start_redis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def infra_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data directory for the session's NATS and Redis."""
    return tmp_path_factory.mktemp("infra")


@pytest.fixture(scope="session")
def nats_server(infra_dir: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free port."""
    server = start_nats(infra_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(infra_dir: Path) -> Iterator[RedisServer]:
    """A real redis-server (password protected) on a free port."""
    server = start_redis(infra_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def service_env(
    nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path, model_folder: Path
) -> dict[str, str]:
    """Environment for starting one service process against the session infrastructure."""
    return {
        **os.environ,
        "LLMOS_DATA_DIR": str(tmp_path / "data"),
        "LLMOS_NATS_URL": nats_server.url,
        "LLMOS_REDIS_URL": redis_server.url,
        "LLMOS_LISTEN_ADDR": "127.0.0.1:0",
        "LLMOS_AUTH_HTTP_ADDR": "127.0.0.1:0",
        "LLMOS_HEARTBEAT_S": "0.5",
        "LLMOS_SHUTDOWN_GRACE_S": "2",
        "LLMOS_MODELS_DIR": str(model_folder.parent),
        "LLMOS_MAX_CONTEXT": "512",
    }


def run_python(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python ARGS` from the repository root and capture its output."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model imported from its GGUF file, once per test session."""
    from llmos.model.default import ensure_default_model

    return ensure_default_model(tmp_path_factory.mktemp("models"))
