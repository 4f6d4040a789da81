"""Jobs: their checks at submit, their state in Redis, and their state-change events.

State lives in Redis (one hash per job: the serialized Job and its state), so a
scheduler killed at any moment restarts knowing every job. Each transition is a
compare-and-set in a Lua script — only from the states the lifecycle allows — and is
then published as a `JobStateChanged` event on JetStream for the job's tenant.

Lifecycle: QUEUED -> SCHEDULED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED, and
PREEMPTED back to QUEUED; a job whose trainer died goes from SCHEDULED or RUNNING back to
QUEUED and resumes from its last checkpoint.
"""

from __future__ import annotations

import builtins
import logging
import time
import uuid
from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from llmos import subjects
from llmos.auditing import AuditPublisher, job_record
from llmos.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from llmos.events import new_event
from llmos.messaging import EventPublisher
from llmos.priority import PriorityClass
from llmos.training import (
    BYTE_VOCAB,
    TrainingConfig,
    check_memory,
    memory_needed,
    parameter_count,
)
from llmos.v1 import common_pb2, events_pb2, scheduler_pb2
from services.scheduler.progress_history import extended

log = logging.getLogger("llmos.scheduler.jobs")

S = common_pb2.JobState
TERMINAL = frozenset({S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED})
#: state -> the states it may move to
TRANSITIONS: dict[int, frozenset[int]] = {
    S.JOB_STATE_QUEUED: frozenset({S.JOB_STATE_SCHEDULED, S.JOB_STATE_CANCELLED}),
    S.JOB_STATE_SCHEDULED: frozenset(
        {S.JOB_STATE_RUNNING, S.JOB_STATE_QUEUED, S.JOB_STATE_CANCELLED, S.JOB_STATE_FAILED}
    ),
    S.JOB_STATE_RUNNING: frozenset(
        {
            S.JOB_STATE_SUCCEEDED,
            S.JOB_STATE_FAILED,
            S.JOB_STATE_CANCELLED,
            S.JOB_STATE_PREEMPTED,
            S.JOB_STATE_QUEUED,  # its trainer died: back to the queue, from its checkpoint
        }
    ),
    S.JOB_STATE_PREEMPTED: frozenset({S.JOB_STATE_QUEUED, S.JOB_STATE_CANCELLED}),
}
KINDS = ("training",)
NAME_MAX = 128
LIMITS = {  # per process: anything above is a typo, not a request
    "cpu_millicores": 10_000_000,
    "memory_bytes": 1 << 50,
    "gpus": 1024,
    "gpu_memory_bytes": 1 << 50,
    "processes": 4096,
}
PREFIX = "llmos:jobs:"
#: every job not yet ended, whatever its tenant (what the leader works through each tick)
ACTIVE = f"{PREFIX}active"
PAGE_DEFAULT, PAGE_MAX = 100, 1000
#: jobs not yet ended that one tenant may have (each one is leader work on every tick)
MAX_ACTIVE_PER_TENANT = 100

#: Create a job only if its tenant has fewer than ARGV[5] active ones: the count and the
#: creation are one atomic step, so concurrent submissions cannot all slip under the cap.
#: KEYS: job hash, tenant's job index, all active jobs, tenant's active jobs.
#: ARGV: state, data, created-at score, job id, cap. Returns 1, or 0 when at the cap.
_CREATE = """
if redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'data', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[4])
return 1
"""

#: Compare-and-set a job's state. A job that ends leaves the active sets in the same
#: atomic step, so no crash in between can keep its tenant's place under the cap taken.
#: KEYS: job hash, all active jobs, the tenant's active jobs. ARGV: new state, new bytes,
#: "1" if the new state is terminal, job id, then the allowed current states.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return -1 end
for i = 5, #ARGV do
  if current == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'data', ARGV[2])
    if ARGV[3] == '1' then
      redis.call('SREM', KEYS[2], ARGV[4])
      redis.call('SREM', KEYS[3], ARGV[4])
    end
    return 1
  end
end
return tonumber(current)
"""


def state_name(state: int) -> str:
    return S.Name(state).removeprefix("JOB_STATE_")


def check_spec(
    spec: scheduler_pb2.JobSpec, trainers: Sequence[common_pb2.ServiceInstance]
) -> tuple[PriorityClass, TrainingConfig]:
    """Refuse a job that is malformed or could never run on this cluster."""
    if not 1 <= len(spec.name) <= NAME_MAX:
        raise InvalidArgument("spec.name", f"must be 1 to {NAME_MAX} characters")
    if spec.kind not in KINDS:
        raise InvalidArgument("spec.kind", f"must be one of: {', '.join(KINDS)}")
    priority = PriorityClass.parse(spec.priority, "spec.priority")
    need = spec.resources
    for name, limit in LIMITS.items():
        value = getattr(need, name)
        if value < 0:
            raise InvalidArgument(f"spec.resources.{name}", "must not be negative")
        if value > limit:
            raise InvalidArgument(f"spec.resources.{name}", f"{value} is more than {limit}")
    if not trainers:
        raise Unavailable("no trainer is running, so no training job can be placed; retry later")
    _check_fits(need, trainers)
    config = TrainingConfig.parse(MessageToDict(spec.config), "spec.config")
    if not config.base_model:  # a fine-tune is checked once its base model is known
        shape = config.model_shape()
        hidden, layers, vocab = shape["hidden_size"], shape["num_hidden_layers"], BYTE_VOCAB
        parameters = parameter_count(vocab, hidden, shape["intermediate_size"], layers)
        check_memory(memory_needed(config, parameters, hidden, layers, vocab), need.memory_bytes)
    return priority, config


def _check_fits(need: common_pb2.Resources, trainers: Sequence[common_pb2.ServiceInstance]) -> None:
    processes = max(need.processes, 1)
    for name in ("cpu_millicores", "memory_bytes", "gpus", "gpu_memory_bytes"):
        per_process = getattr(need, name)
        largest = max(getattr(t.capacity, name) for t in trainers)
        total = sum(getattr(t.capacity, name) for t in trainers)
        if per_process > largest:
            raise InvalidArgument(
                f"spec.resources.{name}",
                f"{per_process} per process, but the largest trainer offers {largest}",
            )
        if per_process * processes > total:
            raise InvalidArgument(
                f"spec.resources.{name}",
                f"{processes} processes x {per_process} = {per_process * processes}, "
                f"more than the whole cluster's {total}",
            )


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


class JobStore:
    """Jobs in Redis, with lifecycle-checked transitions and their events."""

    def __init__(
        self,
        redis: aioredis.Redis,
        events: EventPublisher,
        audit: AuditPublisher | None = None,
        max_active_per_tenant: int = MAX_ACTIVE_PER_TENANT,
    ) -> None:
        self._redis = redis
        self._events = events
        self._audit = audit
        self._max_active = max_active_per_tenant
        self._transition = redis.register_script(_TRANSITION)
        self._create = redis.register_script(_CREATE)

    async def create(
        self, tenant: str, owner: str, spec: scheduler_pb2.JobSpec, traceparent: str = ""
    ) -> scheduler_pb2.Job:
        """Store a new QUEUED job; RESOURCE_EXHAUSTED if the tenant is at its cap."""
        job = scheduler_pb2.Job(
            job_id=f"job-{uuid.uuid4().hex[:16]}",
            tenant=tenant,
            owner=owner,
            spec=spec,
            state=S.JOB_STATE_QUEUED,
            reason="waiting for resources",
            created_at=_now(),
            updated_at=_now(),
            traceparent=traceparent,
        )
        keys = [job_key(job.job_id), f"{PREFIX}tenant:{tenant}", ACTIVE, active_of(tenant)]
        args: list[bytes | str | float] = [
            job.state, job.SerializeToString(), time.time(), job.job_id, self._max_active,
        ]  # fmt: skip
        if not await self._create(keys=keys, args=args):
            raise ResourceExhausted(
                f"tenant {tenant!r} already has {self._max_active} jobs queued or running, "
                "its limit; wait for some to end or cancel some"
            )
        await self._announce(job, S.JOB_STATE_UNSPECIFIED)
        return job

    async def get(self, tenant: str, job_id: str) -> scheduler_pb2.Job:
        """The job, if it exists and belongs to `tenant`."""
        raw = await self._redis.hget(job_key(job_id), "data") if job_id else None  # type: ignore[misc]
        if raw is None:
            raise NotFound(f"job {job_id!r} does not exist")
        job = scheduler_pb2.Job.FromString(raw)
        if job.tenant != tenant:
            raise PermissionDenied(
                f"job {job_id!r} belongs to another tenant; tenant {tenant!r} may only see "
                "and change its own jobs"
            )
        return job

    async def list(
        self, tenant: str, states: Iterable[int], page_size: int, page_token: str
    ) -> tuple[list[scheduler_pb2.Job], str]:
        """The tenant's jobs, newest first, filtered by state, one page at a time."""
        if page_size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        size = min(page_size or PAGE_DEFAULT, PAGE_MAX)
        try:
            offset = int(page_token or 0)
        except ValueError:
            raise InvalidArgument("page_token", "is not a token this server issued") from None
        wanted = set(states)
        ids = await self._redis.zrevrange(f"{PREFIX}tenant:{tenant}", offset, offset + size - 1)
        jobs = []
        for job_id in ids:
            raw = await self._redis.hget(job_key(job_id.decode()), "data")  # type: ignore[misc]
            if raw is not None:
                job = scheduler_pb2.Job.FromString(raw)
                if not wanted or job.state in wanted:
                    jobs.append(job)
        next_token = str(offset + size) if len(ids) == size else ""
        return jobs, next_token

    async def active(self) -> builtins.list[scheduler_pb2.Job]:
        """Every job not yet ended (queued, scheduled, running or preempted), read in one
        round trip."""
        ids = sorted(i.decode() for i in await self._redis.smembers(ACTIVE))  # type: ignore[misc]
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(job_key(job_id), "data")
            raws = await pipe.execute()
        return [scheduler_pb2.Job.FromString(raw) for raw in raws if raw is not None]

    async def current(self, job_id: str) -> scheduler_pb2.Job | None:
        """The job as stored now, whoever owns it (for the scheduler's own use)."""
        raw = await self._redis.hget(job_key(job_id), "data")  # type: ignore[misc]
        return None if raw is None else scheduler_pb2.Job.FromString(raw)

    async def move(
        self,
        job: scheduler_pb2.Job,
        to: int,
        reason: str,
        placement: Sequence[scheduler_pb2.Placement] = (),
    ) -> scheduler_pb2.Job:
        """Move `job` to state `to` if the lifecycle allows it from its current state.
        SCHEDULED starts a new attempt on `placement`; QUEUED forgets the placement."""
        allowed_from = [s for s, targets in TRANSITIONS.items() if to in targets]
        updated = scheduler_pb2.Job()
        updated.CopyFrom(job)
        previous = job.state
        updated.state = to  # type: ignore[assignment]
        updated.reason = reason
        updated.updated_at.CopyFrom(_now())
        if to == S.JOB_STATE_SCHEDULED:
            updated.attempt += 1
            del updated.placement[:]
            updated.placement.extend(placement)
            updated.ClearField("progress")  # the new attempt reports its own
            updated.scheduled_at.CopyFrom(updated.updated_at)
        elif to == S.JOB_STATE_QUEUED:
            del updated.placement[:]
        await self._write(updated, allowed_from)
        await self._announce(updated, previous)
        return updated

    async def record_progress(
        self, job: scheduler_pb2.Job, report: scheduler_pb2.JobReport
    ) -> scheduler_pb2.Job:
        """Keep a running attempt's latest progress and checkpoint, and publish them."""
        updated = scheduler_pb2.Job()
        updated.CopyFrom(job)
        updated.progress.CopyFrom(report.progress)
        if report.progress.step:
            history = extended(job.history, report.progress)
            del updated.history[:]
            updated.history.extend(history)
        if report.checkpoint_blob:  # the checkpoint a new attempt resumes from
            updated.checkpoint_blob = report.checkpoint_blob
            updated.checkpoint_step = report.checkpoint_step
        else:
            updated.checkpoint_step = max(job.checkpoint_step, report.checkpoint_step)
        updated.updated_at.CopyFrom(_now())
        await self._write(updated, [job.state])
        event = new_event("scheduler", tenant=job.tenant)
        event.job_progress.job_id = job.job_id
        event.job_progress.attempt = job.attempt
        event.job_progress.progress.CopyFrom(report.progress)
        event.job_progress.checkpoint_step = updated.checkpoint_step
        await self._publish(job.job_id, event)
        return updated

    async def _write(self, job: scheduler_pb2.Job, allowed_from: Sequence[int]) -> None:
        """Store `job` if its stored state is one of `allowed_from` (compare-and-set)."""
        ends = "1" if job.state in TERMINAL else "0"
        answer = await self._transition(
            keys=[job_key(job.job_id), ACTIVE, active_of(job.tenant)],
            args=[job.state, job.SerializeToString(), ends, job.job_id, *allowed_from],
        )
        if answer == -1:
            raise NotFound(f"job {job.job_id!r} does not exist")
        if answer != 1:
            raise FailedPrecondition(
                f"job {job.job_id!r} is {state_name(int(answer))}; it cannot become "
                f"{state_name(job.state)}"
            )

    async def _announce(self, job: scheduler_pb2.Job, previous: int) -> None:
        """Publish the change; the state in Redis is the truth if NATS is down."""
        event = new_event("scheduler", tenant=job.tenant)
        change = event.job_state_changed
        change.job_id = job.job_id
        change.previous = previous  # type: ignore[assignment]
        change.current = job.state
        change.reason = job.reason
        await self._publish(job.job_id, event)
        if self._audit is not None:
            action = f"job.{state_name(job.state).lower()}"
            resource = f"job/{job.job_id}"
            self._audit.record(job_record("scheduler", action, job, resource, "OK", job.reason))

    async def _publish(self, job_id: str, event: events_pb2.Event) -> None:
        try:
            await self._events.publish(subjects.job_event(job_id), event)
        except Exception as exc:
            log.warning("could not publish a job event", extra={"job": job_id, "error": str(exc)})


def job_key(job_id: str) -> str:
    return f"{PREFIX}{job_id}"


def active_of(tenant: str) -> str:
    """The tenant's jobs not yet ended (what its cap counts)."""
    return f"{PREFIX}active-of:{tenant}"
