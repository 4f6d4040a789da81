"""compose.yaml describes the same topology as the dev stack, and would run as written."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmos.services import SERVICE_MODULES
from tests.conftest import ROOT

COMPOSE = ROOT / "compose.yaml"
SECRETS_ENV = {"LLMOS_NATS_TOKEN": "t" * 32, "LLMOS_REDIS_PASSWORD": "p" * 32}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_every_llmos_service_runs_its_module_with_a_grpc_health_check(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, module in SERVICE_MODULES.items():
        spec = services[name]
        assert spec["command"] == ["python", "-m", module]
        assert importlib.util.find_spec(module) is not None
        port = spec["environment"]["LLMOS_LISTEN_ADDR"].rsplit(":", 1)[1]
        assert spec["healthcheck"]["test"] == [
            "CMD",
            "python",
            "-m",
            "llmos.probe",
            f"127.0.0.1:{port}",
        ]
        assert spec["depends_on"]["nats"] == {"condition": "service_healthy"}


def test_infrastructure_is_durable_and_password_protected(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]["command"]
    assert "-js" in nats and "--auth" in nats
    redis = compose["services"]["redis"]["command"]
    assert "--requirepass" in redis and "--appendonly" in redis
    # Credentials are never literals: compose refuses to start until .env provides them.
    assert nats[nats.index("--auth") + 1].startswith("${LLMOS_NATS_TOKEN:?")
    assert redis[redis.index("--requirepass") + 1].startswith("${LLMOS_REDIS_PASSWORD:?")


def test_only_the_gateway_is_published(compose: dict[str, Any]) -> None:
    published = {name for name, spec in compose["services"].items() if spec.get("ports")}
    assert published == {"gateway"}


def test_gpu_worker_reserves_a_gpu_and_uses_the_external_triton(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["inference-worker-gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    host = worker["environment"]["LLMOS_TRITON_URL"].split(":")[0]
    assert host == "triton" and "tritonserver" in services["triton"]["image"]
    assert worker["depends_on"]["triton"]["condition"] == "service_healthy"


def test_dependencies_name_existing_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, spec in services.items():
        for dependency in spec.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.skipif(_compose_command() is None, reason="no docker compose on this machine")
def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    command = _compose_command()
    assert command is not None
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "--profile", "gpu", "config", "-q"],
        env={**os.environ, **SECRETS_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(_compose_command() is None, reason="no docker compose on this machine")
def test_docker_compose_refuses_to_run_without_generated_credentials() -> None:
    command = _compose_command()
    assert command is not None
    env = {k: v for k, v in os.environ.items() if k not in SECRETS_ENV}
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    assert result.returncode != 0
    assert "set LLMOS_NATS_TOKEN in .env" in result.stderr
