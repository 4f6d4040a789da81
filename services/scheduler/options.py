"""The scheduler's own configuration (LLMOS_* variables beyond the common ones)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmos.config import EnvReader
from llmos.errors import InvalidArgument
from llmos.priority import PriorityClass
from services.scheduler.capacity import Reservation


@dataclass(frozen=True)
class SchedulerOptions:
    #: tenant -> the priority classes it may use; tenants not listed may use every class
    tenant_classes: dict[str, set[PriorityClass]] = field(default_factory=dict)
    #: generations waiting per model before RESOURCE_EXHAUSTED
    queue_capacity: int = 1000
    #: the fraction of a model's queue one tenant may fill, so others are still admitted
    tenant_queue_share: float = 0.5
    #: jobs not yet ended one tenant may have
    tenant_max_active_jobs: int = 100
    #: worker slots per model kept free for `critical` requests
    critical_headroom: int = 0
    #: queued work for a model no live worker serves fails after this long
    unserved_timeout_s: float = 30.0
    #: after start, how long to wait for workers' heartbeats before refusing a model as
    #: unknown (a restarted scheduler must not refuse work its workers can do)
    worker_warmup_s: float = 10.0
    #: trainer process slots kept for a tenant or a class (and the classes above it)
    job_reservations: tuple[Reservation, ...] = ()
    #: a job blocked this long stops lower- and equal-class jobs from starting before it
    backfill_limit_s: float = 600.0


def read_scheduler_options(env: EnvReader) -> SchedulerOptions:
    """LLMOS_TENANT_CLASSES: `tenant=class+class,tenant=class`, e.g. `free=normal+batch`;
    LLMOS_JOB_RESERVATIONS: `tenant:lab-a=4,class:high=2` (trainer process slots)."""
    classes: dict[str, set[PriorityClass]] = {}
    tenant_classes = env.text(
        "TENANT_CLASSES",
        "",
        doc="priority classes each listed tenant may use, e.g. `free=normal+batch,lab=batch`",
        default_shown="every class for every tenant",
    )
    for entry in filter(None, (e.strip() for e in tenant_classes.split(","))):
        tenant, sep, names = entry.partition("=")
        try:
            if not sep or not tenant.strip():
                raise InvalidArgument("entry", f"{entry!r} is not tenant=class+class")
            classes[tenant.strip()] = {PriorityClass.parse(n) for n in names.split("+") if n}
        except InvalidArgument as exc:
            env.errors.append(f"LLMOS_TENANT_CLASSES: {exc.reason}")
    reservations = []
    job_reservations = env.text(
        "JOB_RESERVATIONS",
        "",
        doc="trainer process slots kept for a tenant or a class (and those above it), "
        "e.g. `tenant:lab-a=4,class:high=2`",
    )
    for entry in filter(None, (e.strip() for e in job_reservations.split(","))):
        try:
            reservations.append(_reservation(entry))
        except (InvalidArgument, ValueError):
            env.errors.append(
                f"LLMOS_JOB_RESERVATIONS: {entry!r} is not tenant:NAME=SLOTS or class:NAME=SLOTS"
            )
    return SchedulerOptions(
        tenant_classes=classes,
        queue_capacity=env.integer(
            "QUEUE_CAPACITY",
            1000,
            minimum=1,
            maximum=1_000_000,
            doc="generations waiting per model before RESOURCE_EXHAUSTED",
        ),
        tenant_queue_share=env.number(
            "TENANT_QUEUE_SHARE",
            0.5,
            minimum=0.001,
            maximum=1.0,
            doc="fraction of a model's generation queue one tenant may fill",
        ),
        tenant_max_active_jobs=env.integer(
            "TENANT_MAX_ACTIVE_JOBS",
            100,
            minimum=1,
            maximum=1_000_000,
            doc="training jobs queued or running one tenant may have before RESOURCE_EXHAUSTED",
        ),
        critical_headroom=env.integer(
            "CRITICAL_HEADROOM",
            0,
            minimum=0,
            maximum=100_000,
            doc="worker slots per model kept free for `critical` work",
        ),
        unserved_timeout_s=env.number(
            "UNSERVED_TIMEOUT_S",
            30.0,
            minimum=0.1,
            maximum=86_400,
            doc="seconds before work queued for a model no live worker serves fails",
        ),
        worker_warmup_s=env.number(
            "WORKER_WARMUP_S",
            10.0,
            minimum=0.0,
            maximum=3600,
            doc="after start, seconds to hear workers' heartbeats before calling a model unknown",
        ),
        job_reservations=tuple(reservations),
        backfill_limit_s=env.number(
            "JOB_BACKFILL_LIMIT_S",
            600.0,
            minimum=0.0,
            maximum=86_400,
            doc="seconds a blocked job waits before jobs of its class or lower stop overtaking it",
        ),
    )


def _reservation(entry: str) -> Reservation:
    """`tenant:lab-a=4` or `class:high=2` (process slots on trainers)."""
    target, _, slots = entry.partition("=")
    kind, _, name = target.partition(":")
    count = int(slots)
    if count < 1 or not name.strip():
        raise ValueError(entry)
    if kind.strip() == "tenant":
        return Reservation(count, tenant=name.strip())
    if kind.strip() == "class":
        return Reservation(count, priority=PriorityClass.parse(name.strip()))
    raise ValueError(entry)
