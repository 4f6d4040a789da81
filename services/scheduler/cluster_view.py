"""What a tenant may see of the cluster. Pure: no I/O.

The cluster view is one table for everyone, but some of it is a tenant's own business:
how many tokens it was served (its traffic), which jobs it runs, and which of its
deployments are loaded (their served names carry its private model names), and what
it has waiting. A tenant sees its own of each, and what belongs to nobody (machines,
slots, plain model names, queue lengths: the other tenants' waiting work is summed per
class under tenant ""); an admin of the system tenant sees everything.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable

from llmos.model.names import visible_to
from llmos.priority import PriorityClass
from llmos.v1 import common_pb2, scheduler_pb2

#: what waits: (priority class as the proto numbers it, 0 meaning normal; tenant)
Waiting = tuple[int, str]


def queues_of(
    generations: Iterable[Waiting], jobs: Iterable[Waiting]
) -> list[scheduler_pb2.ClusterStatus.Queue]:
    """One entry per class and tenant with work waiting: highest class first, then by tenant."""
    counted = [(*w, 1, 0) for w in generations] + [(*w, 0, 1) for w in jobs]
    return _summed(counted)


def _summed(
    counts: Iterable[tuple[int, str, int, int]],
) -> list[scheduler_pb2.ClusterStatus.Queue]:
    """(class, tenant, generations, jobs) added up per class and tenant."""
    totals: defaultdict[Waiting, list[int]] = defaultdict(lambda: [0, 0])
    for priority, tenant, generations, jobs in counts:
        total = totals[(PriorityClass.parse(priority).value, tenant)]
        total[0] += generations
        total[1] += jobs
    return [
        scheduler_pb2.ClusterStatus.Queue(
            priority=common_pb2.Priority.Name(priority),
            tenant=tenant,
            generations=total[0],
            jobs=total[1],
        )
        for (priority, tenant), total in sorted(totals.items())
    ]


def cluster_seen_by(
    status: scheduler_pb2.ClusterStatus, tenant: str, own_jobs: Collection[str]
) -> scheduler_pb2.ClusterStatus:
    """`status` as `tenant` may see it; `own_jobs`: the ids of the tenant's jobs."""
    seen = scheduler_pb2.ClusterStatus()
    seen.CopyFrom(status)
    seen.tokens_served_by_tenant.clear()
    if tenant in status.tokens_served_by_tenant:
        seen.tokens_served_by_tenant[tenant] = status.tokens_served_by_tenant[tenant]
    del seen.queues[:]
    seen.queues.extend(_queues_seen_by(status.queues, tenant))
    for worker in seen.workers:
        for models in (worker.loaded_models, worker.available_models):
            kept = [m for m in models if visible_to(m, tenant)]
            del models[:]
            models.extend(kept)
        running = [key for key in worker.running_jobs if _job_of(key) in own_jobs]
        del worker.running_jobs[:]
        worker.running_jobs.extend(running)
    return seen


def _queues_seen_by(
    queues: Iterable[scheduler_pb2.ClusterStatus.Queue], tenant: str
) -> list[scheduler_pb2.ClusterStatus.Queue]:
    """The tenant's own entries; every other tenant's summed per class under ""."""
    return _summed(
        (q.priority, q.tenant if q.tenant == tenant else "", q.generations, q.jobs) for q in queues
    )


def _job_of(key: str) -> str:
    """The job id of an attempt key (`llmos.training.attempt_key`: `<job id>@<attempt>`)."""
    job_id, _, _ = key.rpartition("@")
    return job_id or key
