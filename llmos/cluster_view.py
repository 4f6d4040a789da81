"""What `llmos top` and the console's cluster page show, as rows of text: workers,
queues, tenants and running jobs, from one poll of the gateway (and the one before, for
rates). No I/O and no rendering: the terminal draws these rows with rich, the console
with HTML."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from llmos.priority import PriorityClass
from llmos.v1 import common_pb2, gateway_pb2, scheduler_pb2


@dataclass(frozen=True)
class Poll:
    """What one refresh read from the gateway; `notes` say which parts it may not read."""

    at: float  # seconds since the epoch
    cluster: scheduler_pb2.ClusterStatus
    jobs: Sequence[scheduler_pb2.Job] = ()  # running, the caller's tenant's
    system: gateway_pb2.SystemStatus | None = None
    notes: Sequence[str] = ()


Rows = tuple[Sequence[str], Sequence[Sequence[str]]]


def worker_rows(cluster: scheduler_pb2.ClusterStatus, previous: Poll | None, at: float) -> Rows:
    headers = (
        "INSTANCE", "CPU USED/CORES", "MEMORY GiB", "GPU", "SLOTS BUSY", "TOKENS/S", "MODELS",
        "JOBS",
    )  # fmt: skip
    before = {
        w.instance.instance_id: w.generated_tokens
        for w in (previous.cluster.workers if previous is not None else ())
    }
    seconds = at - previous.at if previous is not None else 0.0
    rows = []
    for w in cluster.workers:
        rate = "-"  # one poll, a trainer, or a worker new since the last poll
        earlier = before.get(w.instance.instance_id)
        if w.instance.service == "inference-worker" and seconds > 0 and earlier is not None:
            rate = rate_text(max(0, w.generated_tokens - earlier) / seconds)
        cap, use = w.capacity, w.in_use
        gpu = "-"
        if cap.gpus:
            gpu = (f"{use.gpus}/{cap.gpus} {use.gpu_memory_bytes / 2**30:.1f}/"
                   f"{cap.gpu_memory_bytes / 2**30:.0f} GiB")  # fmt: skip
        rows.append((
            w.instance.instance_id,
            f"{use.cpu_millicores / 1000:.2f}/{cap.cpu_millicores / 1000:g}",
            f"{use.memory_bytes / 2**30:.2f}/{cap.memory_bytes / 2**30:.1f}",
            gpu,
            f"{w.slots - w.free_slots}/{w.slots}",
            rate,
            ",".join(w.loaded_models) or "-",
            ",".join(w.running_jobs) or "-",
        ))  # fmt: skip
    return headers, rows


def queue_rows(cluster: scheduler_pb2.ClusterStatus) -> Rows:
    rows = [
        (PriorityClass.parse(q.priority).word, q.tenant or "(others)",
         str(q.generations), str(q.jobs))
        for q in cluster.queues
    ]  # fmt: skip
    return ("CLASS", "TENANT", "GENERATIONS", "JOBS"), rows


def tenant_rows(cluster: scheduler_pb2.ClusterStatus, rates: dict[str, float], rated: bool) -> Rows:
    rows = [
        (tenant, str(tokens), rate_text(rates.get(tenant, 0.0)) if rated else "-")
        for tenant, tokens in sorted(cluster.tokens_served_by_tenant.items())
    ]
    return ("TENANT", "TOKENS SERVED", "TOKENS/S"), rows


def job_rows(jobs: Sequence[scheduler_pb2.Job]) -> Rows:
    headers = ("JOB", "NAME", "STEP", "LOSS", "VAL LOSS", "TOKENS/S", "ETA", "ON")
    rows = []
    for job in jobs:
        p = job.progress
        rows.append((
            job.job_id, job.spec.name, f"{p.step}/{p.total_steps or '?'}",
            f"{p.loss:.4f}" if p.step else "-", f"{p.val_loss:.4f}" if p.val_loss else "-",
            rate_text(p.tokens_per_s) if p.step else "-", duration_text(p.eta_s) if p.step else "-",
            ",".join(place.instance_id for place in job.placement) or "-",
        ))  # fmt: skip
    return headers, rows


def tenant_rates(previous: Poll | None, current: Poll) -> dict[str, float]:
    """Tokens/s per tenant between two polls (counters restart with a scheduler: >= 0)."""
    if previous is None or current.at <= previous.at:
        return {}
    seconds = current.at - previous.at
    before = previous.cluster.tokens_served_by_tenant
    return {
        tenant: max(0, tokens - before.get(tenant, 0)) / seconds
        for tenant, tokens in current.cluster.tokens_served_by_tenant.items()
    }


def rate_text(per_s: float) -> str:
    return f"{per_s:.1f}" if per_s < 100 else f"{per_s:.0f}"


def duration_text(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def clock_text(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%H:%M:%S")


def state_of(job: scheduler_pb2.Job) -> str:
    """The job's state without the enum's prefix (QUEUED, RUNNING, SUCCEEDED, ...)."""
    return common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
