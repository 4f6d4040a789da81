"""What a tenant may see of the cluster. Pure: no I/O.

The cluster view is one table for everyone, but some of it is a tenant's own business:
how many tokens it was served (its traffic), which jobs it runs, and which of its
deployments are loaded (their served names carry its private model names). A tenant
sees its own of each, and what belongs to nobody (machines, slots, plain model names,
queue lengths); an admin of the system tenant sees everything.
"""

from __future__ import annotations

from collections.abc import Collection

from llmos.model.names import visible_to
from llmos.v1 import scheduler_pb2


def cluster_seen_by(
    status: scheduler_pb2.ClusterStatus, tenant: str, own_jobs: Collection[str]
) -> scheduler_pb2.ClusterStatus:
    """`status` as `tenant` may see it; `own_jobs`: the ids of the tenant's jobs."""
    seen = scheduler_pb2.ClusterStatus()
    seen.CopyFrom(status)
    seen.tokens_served_by_tenant.clear()
    if tenant in status.tokens_served_by_tenant:
        seen.tokens_served_by_tenant[tenant] = status.tokens_served_by_tenant[tenant]
    for worker in seen.workers:
        for models in (worker.loaded_models, worker.available_models):
            kept = [m for m in models if visible_to(m, tenant)]
            del models[:]
            models.extend(kept)
        running = [key for key in worker.running_jobs if _job_of(key) in own_jobs]
        del worker.running_jobs[:]
        worker.running_jobs.extend(running)
    return seen


def _job_of(key: str) -> str:
    """The job id of an attempt key (`llmos.training.attempt_key`: `<job id>@<attempt>`)."""
    job_id, _, _ = key.rpartition("@")
    return job_id or key
