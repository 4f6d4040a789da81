"""deploy/kubernetes: every manifest is valid against the Kubernetes schemas (offline,
`kubernetes-validate`, installed by `make`), and says what running LLM OS there needs:
every service, health probes, resources, disruption budgets, only the gateway reachable
from outside, secrets mounted rather than written into a manifest, scrape annotations,
and a GPU worker beside Triton. No cluster is needed (nor reachable here) to check this."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llmos.services import SERVICE_MODULES
from tests.conftest import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
#: the Kubernetes release the manifests are checked against
VERSION = "1.33.0"
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def manifests(*overlays: str) -> list[Path]:
    folders = overlays or ("base", "gpu")
    return sorted(
        path
        for folder in folders
        for path in (KUBERNETES / folder).glob("*.yaml")
        if path.name != "kustomization.yaml"
    )


def documents(*overlays: str) -> list[dict[str, Any]]:
    return [doc for path in manifests(*overlays) for doc in yaml.safe_load_all(path.read_text())]


def of_kind(*kinds: str) -> list[dict[str, Any]]:
    return [doc for doc in documents() if doc["kind"] in kinds]


def pod(workload: dict[str, Any]) -> dict[str, Any]:
    return dict(workload["spec"]["template"]["spec"])


def llmos_workloads() -> list[dict[str, Any]]:
    """The long-running workloads (not the setup jobs)."""
    return of_kind("Deployment", "StatefulSet")


@pytest.mark.parametrize("path", manifests(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_manifest_is_valid_for_kubernetes(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_each_kustomization_lists_exactly_its_manifests(overlay: str) -> None:
    kustomization = yaml.safe_load((KUBERNETES / overlay / "kustomization.yaml").read_text())
    listed = {name for name in kustomization["resources"] if not name.startswith("..")}
    assert listed == {path.name for path in manifests(overlay)}


def test_every_service_runs_with_health_probes_resources_and_scrape_annotations() -> None:
    modules = {
        container["command"][-1]
        for workload in llmos_workloads()
        for container in pod(workload)["containers"]
        if container["image"] == "llmos"
    }
    assert set(SERVICE_MODULES.values()) <= modules
    for workload in llmos_workloads():
        name = workload["metadata"]["name"]
        for container in pod(workload)["containers"]:
            assert ("readinessProbe" in container and "livenessProbe" in container) or (
                container["name"] == "triton" and "readinessProbe" in container
            ), f"{name}/{container['name']} has no health probes"
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests), f"{name} requests no cpu or memory"
            assert "memory" in container["resources"]["limits"], f"{name} has no memory limit"
        if name not in ("nats", "redis", "redis-sentinel"):  # servers, not LLM OS services
            annotations = workload["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true", name
            assert annotations["prometheus.io/port"] == "9464", name


def test_internal_grpc_health_is_checked_over_mutual_tls() -> None:
    for workload in llmos_workloads():
        for container in pod(workload)["containers"]:
            probe = container.get("readinessProbe", {}).get("exec", {}).get("command", [])
            if probe[:3] == ["python", "-m", "llmos.probe"]:
                service = probe[4]
                assert service in SERVICE_MODULES and service != "gateway"


def test_every_workload_has_a_disruption_budget() -> None:
    budgets = [doc["spec"]["selector"]["matchLabels"] for doc in of_kind("PodDisruptionBudget")]
    for workload in llmos_workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(all(labels.get(k) == v for k, v in selector.items()) for selector in budgets), (
            f"{workload['metadata']['name']} has no PodDisruptionBudget"
        )


def test_every_pod_is_one_the_network_policies_let_reach_llmos() -> None:
    for workload in of_kind(*WORKLOADS):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "llmos", workload["metadata"]["name"]


def test_only_the_gateway_is_reachable_from_outside() -> None:
    policies = {doc["metadata"]["name"]: doc["spec"] for doc in of_kind("NetworkPolicy")}
    deny = policies["default-deny-ingress"]
    assert deny["podSelector"] == {} and "ingress" not in deny
    for name, spec in policies.items():
        for rule in spec.get("ingress", []):
            if "from" not in rule:  # from anywhere
                assert spec["podSelector"] == {
                    "matchLabels": {"app.kubernetes.io/name": "gateway"}
                }, name
                assert sorted(p["port"] for p in rule["ports"]) == [50050, 50051]
    public = [doc for doc in of_kind("Service") if doc["spec"].get("type") == "LoadBalancer"]
    assert [doc["metadata"]["name"] for doc in public] == ["gateway"]


def test_secrets_are_mounted_never_written_in_a_manifest() -> None:
    for doc in documents():
        if doc["kind"] == "Secret":
            pytest.fail(f"a Secret is written in the manifests: {doc['metadata']['name']}")
    for workload in of_kind(*WORKLOADS):
        spec = pod(workload)
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            for variable in container.get("env", []):
                value = str(variable.get("value", "")).lower()
                assert not any(word in value for word in ("password", "secret=", "token=")), (
                    variable
                )
            mounted = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
            if container["image"] == "llmos":
                assert mounted.get("secrets") == "/secrets", workload["metadata"]["name"]
                claim = volumes["secrets"]["persistentVolumeClaim"]["claimName"]
                assert claim == "llmos-secrets"
    gateway = next(w for w in llmos_workloads() if w["metadata"]["name"] == "gateway")
    tls = next(v for v in pod(gateway)["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "llmos-gateway-tls"


def test_the_gpu_worker_requests_a_gpu_for_triton_and_shares_its_model_repository() -> None:
    worker = next(
        doc for doc in documents("gpu") if doc["metadata"]["name"] == "inference-worker-gpu"
    )
    containers = {c["name"]: c for c in pod(worker)["containers"]}
    assert containers["triton"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in containers["inference-worker"]["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in containers["inference-worker"]["env"]}
    assert env["LLMOS_DEVICE"] == "gpu" and env["LLMOS_TRITON_URL"] == "127.0.0.1:8001"
    assert env["LLMOS_TRITON_REPOSITORY"].startswith("/data/")
    for container in containers.values():  # one volume at one path: entries' paths hold
        assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert "--model-repository=/data/triton-repository" in containers["triton"]["command"][-1]


def test_nats_is_a_three_node_cluster_keeping_every_stream_on_all_three() -> None:
    nats = next(w for w in of_kind("StatefulSet") if w["metadata"]["name"] == "nats")
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["serviceName"] == "nats-cluster"
    jobs = {job["metadata"]["name"]: pod(job)["containers"][0]["command"] for job in of_kind("Job")}
    init, streams = jobs["llmos-setup"], jobs["llmos-streams"]
    routes = init[init.index("--nats-routes") + 1].split(",")
    assert routes == [f"nats-{i}.nats-cluster:6222" for i in range(3)]
    assert streams[streams.index("--replicas") + 1] == "3"
    config = next(doc for doc in of_kind("ConfigMap") if doc["metadata"]["name"] == "llmos-env")
    assert config["data"]["LLMOS_NATS_URL"].count("tls://") == 3


def test_redis_has_a_replica_and_three_sentinels_that_services_ask() -> None:
    sets = {w["metadata"]["name"]: w for w in of_kind("StatefulSet")}
    assert sets["redis"]["spec"]["replicas"] == 2
    assert "--replica-of" in pod(sets["redis"])["containers"][0]["command"]
    assert sets["redis-sentinel"]["spec"]["replicas"] == 3
    config = next(doc for doc in of_kind("ConfigMap") if doc["metadata"]["name"] == "llmos-env")
    sentinels = config["data"]["LLMOS_REDIS_SENTINELS"].split(",")
    assert sentinels == [f"redis-sentinel-{i}.redis-sentinel:26379" for i in range(3)]


def strategic_merge(base: Any, patch: Any) -> Any:
    """What kustomize makes of a strategic-merge patch, for the fields used here: maps
    merge key by key, lists of named items merge item by name, anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else value
        return merged
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(item, dict) and "name" in item for item in base + patch)
    ):
        by_name = {item["name"]: item for item in base}
        extra = [item for item in patch if item["name"] not in by_name]
        merged_items = [
            strategic_merge(item, next((p for p in patch if p["name"] == item["name"]), {}))
            for item in base
        ]
        return merged_items + extra
    if isinstance(base, list) and isinstance(patch, list):  # volumeMounts: by mountPath
        paths = {item.get("mountPath") for item in patch if isinstance(item, dict)}
        kept = [i for i in base if not isinstance(i, dict) or i.get("mountPath") not in paths]
        return kept + patch
    return patch


def shared_backends() -> dict[tuple[str, str], dict[str, Any]]:
    """The objects the shared-backends overlay changes, as kustomize would build them."""
    overlay = KUBERNETES / "shared-backends"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../base"]
    base = {(d["kind"], d["metadata"]["name"]): d for d in documents("base")}
    built = {}
    for entry in kustomization["patches"]:
        patch = yaml.safe_load((overlay / entry["path"]).read_text())
        key = (patch["kind"], patch["metadata"]["name"])
        assert key in base, f"{entry['path']} patches {key}, which base does not have"
        built[key] = strategic_merge(base[key], patch)
    return built


def test_the_shared_backends_overlay_builds_valid_objects_with_credentials_as_files() -> None:
    built = shared_backends()
    for document in built.values():
        kubernetes_validate.validate(document, VERSION, strict=True)
    config = built[("ConfigMap", "llmos-env")]["data"]
    for name in ("LLMOS_STORAGE_DATABASE_URL", "LLMOS_AUDIT_DATABASE_URL"):
        assert config[name].startswith("postgresql://") and "@" not in config[name]
    assert config["LLMOS_STORAGE_S3_ENDPOINT"].startswith("https://")
    storage = built[("StatefulSet", "storage")]
    assert storage["spec"]["replicas"] == 2  # no data of its own: replicas share the backends
    container = pod(storage)["containers"][0]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/secrets"]["name"] == "secrets"  # the trust material stays mounted
    for path in ("/secrets/postgres/storage.json", "/secrets/s3/storage.json"):
        assert mounts[path]["name"] == "backend-credentials" and mounts[path]["readOnly"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LLMOS_STORAGE_KEK_FILE"].startswith(mounts["/kek"]["mountPath"])
    secrets = {v["name"]: v.get("secret", {}) for v in pod(storage)["volumes"]}
    assert secrets["kek"]["secretName"] == "llmos-storage-kek"
    audit = pod(built[("StatefulSet", "audit")])["containers"][0]
    assert "/secrets/postgres/audit.json" in {m["mountPath"] for m in audit["volumeMounts"]}
