"""Tenants' models stay apart: cache folders keyed by owner, version and content; served
names that name their tenant unambiguously; and what one tenant sees of the cluster."""

from __future__ import annotations

import pytest

from gateway.deployments import Deployments, served_name
from llmos.errors import NotFound
from llmos.model.names import served_owner, visible_to
from llmos.modelstore import cache_folder
from llmos.v1 import common_pb2, scheduler_pb2, storage_pb2
from services.scheduler.cluster_view import cluster_seen_by


def version(tenant: str, number: int = 1, weights: str = "a" * 64) -> storage_pb2.ModelVersion:
    return storage_pb2.ModelVersion(
        tenant=tenant, model="mine", version=number,
        files={"config.json": "c" * 64, "model.safetensors": weights},
    )  # fmt: skip


def test_two_tenants_models_of_one_name_never_share_a_cache_folder() -> None:
    assert cache_folder(version("lab-a")) != cache_folder(version("lab-b"))
    assert cache_folder(version("lab-a")).parts[:2] == (".registry", "lab-a")


def test_other_versions_or_other_content_get_their_own_cache_folder() -> None:
    folders = {
        cache_folder(version("lab-a", 1)),
        cache_folder(version("lab-a", 2)),
        cache_folder(version("lab-a", 1, weights="b" * 64)),
    }
    assert len(folders) == 3
    assert cache_folder(version("lab-a")) == cache_folder(version("lab-a"))  # a cache hit


def test_served_names_of_two_tenants_never_collide_and_name_their_owner() -> None:
    # tenant names may contain "--": lab deploying evil--foo must not be lab--evil's foo
    pairs = [("lab", "evil--foo"), ("lab--evil", "foo"), ("lab-", "foo-"), ("lab", "-foo")]
    names = [served_name(tenant, model, 1) for tenant, model in pairs]
    assert len(set(names)) == len(names)
    assert [served_owner(name) for name in names] == [tenant for tenant, _ in pairs]


def test_a_tenant_cannot_see_or_call_another_tenants_deployment() -> None:
    theirs = served_name("lab-a", "secret", 3)
    assert not visible_to(theirs, "lab-b")
    assert visible_to(theirs, "lab-a")
    assert visible_to(served_name("system", "shared", 1), "lab-b")
    assert visible_to("smollm2-135m-instruct", "lab-b")
    with pytest.raises(NotFound, match="is not served"):
        Deployments.check_reachable("lab-b", theirs)


def test_a_tenant_sees_only_its_own_jobs_tokens_and_deployments_in_the_cluster() -> None:
    worker = scheduler_pb2.WorkerStatus(
        instance=common_pb2.ServiceInstance(service="inference-worker"),
        loaded_models=["smollm2-135m-instruct", "lab-a--secret-v1", "lab-b--mine-v2"],
        available_models=["lab-a--secret-v1", "system--shared-v1"],
    )
    trainer = scheduler_pb2.WorkerStatus(
        instance=common_pb2.ServiceInstance(service="trainer"),
        running_jobs=["job-of-a@1", "job-of-b@2"],
    )
    status = scheduler_pb2.ClusterStatus(
        workers=[worker, trainer], queued_requests=3,
        tokens_served_by_tenant={"lab-a": 900, "lab-b": 40},
    )  # fmt: skip
    seen = cluster_seen_by(status, "lab-b", {"job-of-b"})
    assert dict(seen.tokens_served_by_tenant) == {"lab-b": 40}
    assert list(seen.workers[0].loaded_models) == ["smollm2-135m-instruct", "lab-b--mine-v2"]
    assert list(seen.workers[0].available_models) == ["system--shared-v1"]
    assert list(seen.workers[1].running_jobs) == ["job-of-b@2"]
    assert seen.queued_requests == 3  # a count belongs to nobody
    assert "lab-a" not in str(seen) and "job-of-a" not in str(seen)
    assert cluster_seen_by(status, "lab-c", set()).tokens_served_by_tenant == {}
