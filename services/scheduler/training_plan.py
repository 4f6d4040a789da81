"""The training leader's rules, as decisions over a snapshot: jobs and trainers in,
actions out. The adapter (`services.scheduler.training`) reads the jobs from Redis and the
trainers from the worker table, and carries the actions out (job moves in Redis, words
to trainers over NATS).

Each tick:
1. `leases`: hand back the work of lost trainers — a placed trainer that stopped
   heartbeating, or one that does not list the attempt in its heartbeats for a grace
   period (a lease that lapsed). The job goes back to QUEUED and resumes from its last
   checkpoint. A job left PREEMPTED (a scheduler died between the two moves) is requeued.
2. `placements`: queued jobs in priority order (within a class, the tenant holding the
   fewest processes first, then the oldest job), each gang whole or not at all, honouring
   reservations. When a job does not fit, the fewest lower-priority running jobs that
   make room are preempted: told to checkpoint, they report PREEMPTED and are requeued.
   While that is under way (or once a blocked job has waited `backfill_limit_s`), jobs of
   its class or lower are not started in the capacity being freed.

`report_steps` says what a trainer's report does to its job.

Pure logic: no NATS, no Redis, no clock; callers pass the times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from llmos import subjects
from llmos.priority import PriorityClass
from llmos.training import attempt_key
from llmos.v1 import common_pb2, scheduler_pb2
from services.scheduler.gang import GangRequest, Holding, TrainerPool, victims_for
from services.scheduler.options import SchedulerOptions

S = common_pb2.JobState
HOLDING = (S.JOB_STATE_SCHEDULED, S.JOB_STATE_RUNNING)
PREEMPT_RESEND_S = 10.0


def request_of(job: scheduler_pb2.Job) -> GangRequest:
    """What a job asks of the trainers."""
    return GangRequest(
        job_id=job.job_id,
        tenant=job.tenant,
        priority=PriorityClass.parse(job.spec.priority),
        per_process=job.spec.resources,
        processes=max(job.spec.resources.processes, 1),
    )


def holding_of(job: scheduler_pb2.Job) -> Holding:
    """What a placed job holds."""
    return Holding(
        request_of(job),
        tuple((p.instance_id, p.processes) for p in job.placement),
        started=job.scheduled_at.seconds + job.scheduled_at.nanos / 1e9,
    )


@dataclass(frozen=True)
class HandBack:
    """Stop the job's attempt where it runs and requeue it: `why` its lease lapsed."""

    job: scheduler_pb2.Job
    why: str


@dataclass(frozen=True)
class Requeue:
    """Move a PREEMPTED job back to QUEUED."""

    job: scheduler_pb2.Job


@dataclass(frozen=True)
class Assign:
    """Place the job: SCHEDULED on `placement`, then each trainer told its share."""

    job: scheduler_pb2.Job
    placement: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Preempt:
    """Tell `job`'s trainers to checkpoint and stop, saying `reason`."""

    job: scheduler_pb2.Job
    reason: str


TrainingAction = HandBack | Requeue | Assign | Preempt


@dataclass
class TrainingPlanner:
    """The leader's memory between ticks: when attempts went missing, whom it preempted."""

    options: SchedulerOptions
    started_at: float
    #: how long a trainer may be unheard of, or silent about an attempt, before its work
    #: is handed back
    grace_s: float
    _missing_since: dict[str, float] = field(default_factory=dict)
    _preempting: dict[str, float] = field(default_factory=dict)  # job id -> when told

    def leases(
        self,
        jobs: Sequence[scheduler_pb2.Job],
        trainers: Mapping[str, scheduler_pb2.WorkerStatus],
        now: float,
    ) -> list[TrainingAction]:
        """Hand back jobs whose lease lapsed; requeue jobs left PREEMPTED."""
        actions: list[TrainingAction] = []
        for job in jobs:
            if job.state in HOLDING:
                why = self._lost_trainer(job, trainers, now)
                if why:
                    actions.append(HandBack(job, why))
            elif job.state == S.JOB_STATE_PREEMPTED:
                actions.append(Requeue(job))
        return actions

    def _lost_trainer(
        self,
        job: scheduler_pb2.Job,
        trainers: Mapping[str, scheduler_pb2.WorkerStatus],
        now: float,
    ) -> str:
        """Why the job's lease lapsed, or "" while it holds."""
        if now - self.started_at < self.grace_s:
            return ""  # just started: trainers have not all been heard yet
        key = attempt_key(job.job_id, job.attempt)
        for placed in job.placement:
            status = trainers.get(placed.instance_id)
            if status is None:
                return f"its trainer {placed.instance_id} stopped heartbeating"
            if key in status.running_jobs:
                self._missing_since.pop(key, None)
                continue
            since = self._missing_since.setdefault(key, now)
            if now - since > self.grace_s:
                return f"its trainer {placed.instance_id} no longer runs it"
        return ""

    def placements(
        self,
        jobs: Sequence[scheduler_pb2.Job],
        trainers: Mapping[str, scheduler_pb2.WorkerStatus],
        now: float,
        wall_now: float,
    ) -> list[TrainingAction]:
        """Place what fits; preempt for what does not (see the module docstring)."""
        holding = [j for j in jobs if j.state in HOLDING]
        queued = [j for j in jobs if j.state == S.JOB_STATE_QUEUED]
        capacity = {tid: w.instance.capacity for tid, w in trainers.items()}
        reservations = self.options.job_reservations
        pool = TrainerPool(capacity, [holding_of(j) for j in holding], reservations)
        held_by_tenant: dict[str, int] = {}
        for job in holding:
            held_by_tenant[job.tenant] = held_by_tenant.get(job.tenant, 0) + sum(
                p.processes for p in job.placement
            )
        queued.sort(
            key=lambda j: (
                PriorityClass.parse(j.spec.priority),
                held_by_tenant.get(j.tenant, 0),
                j.created_at.seconds,
                j.created_at.nanos,
            )
        )
        by_id = {j.job_id: j for j in holding}
        running_ids = {j.job_id for j in holding if j.state == S.JOB_STATE_RUNNING}
        for gone in set(self._preempting) - running_ids:  # it stopped (or ended)
            del self._preempting[gone]
        actions: list[TrainingAction] = []
        barrier: PriorityClass | None = None  # jobs of this class or lower wait
        for job in queued:
            request = request_of(job)
            if barrier is not None and request.priority >= barrier:
                continue
            placement = pool.place(request)
            if placement is not None:
                actions.append(Assign(job, placement))
                held_by_tenant[job.tenant] = held_by_tenant.get(job.tenant, 0) + request.processes
                continue
            # jobs already told to make room count as gone; the others may be chosen
            leaving = [h for h in pool.holdings if h.request.job_id in self._preempting]
            staying = [h for h in pool.holdings if h not in leaving]
            victims = victims_for(
                request, capacity, staying, running_ids - set(self._preempting), reservations
            )
            if victims is not None:  # room is being made: wait for it
                for victim in victims:
                    actions += self._preempt(by_id[victim.request.job_id], job, now)
                for holding_job in leaving:
                    actions += self._preempt(by_id[holding_job.request.job_id], job, now, True)
                barrier = request.priority
            elif wall_now - job.updated_at.seconds > self.options.backfill_limit_s:
                barrier = request.priority
        return actions

    def _preempt(
        self, victim: scheduler_pb2.Job, winner: scheduler_pb2.Job, now: float, resend: bool = False
    ) -> list[TrainingAction]:
        """Preempt `victim` once; repeat the word now and then in case it was lost (the
        trainer ignores repeats)."""
        told = self._preempting.get(victim.job_id)
        if told is not None and (not resend or now - told < PREEMPT_RESEND_S):
            return []
        self._preempting[victim.job_id] = now
        priority = PriorityClass.parse(winner.spec.priority).word
        return [Preempt(victim, f"preempted for {priority} job {winner.job_id}")]

    def preempted(self, job_id: str) -> None:
        """The job reported PREEMPTED: it made its room."""
        self._preempting.pop(job_id, None)


# -- trainers' reports ------------------------------------------------------------------


@dataclass(frozen=True)
class RecordProgress:
    """Keep the report's progress and checkpoint on the job (and publish them)."""


@dataclass(frozen=True)
class Move:
    """Move the job to `state`, saying `reason`."""

    state: int
    reason: str


@dataclass(frozen=True)
class SetResult:
    """Keep what the finished job produced on the job, before its final move."""

    result: str


@dataclass(frozen=True)
class RequeuePreempted:
    """Move the job, just PREEMPTED, back to QUEUED to resume from its checkpoint."""


ReportStep = RecordProgress | Move | SetResult | RequeuePreempted


def requeue_reason(job: scheduler_pb2.Job) -> str:
    """Why a preempted job is queued again."""
    return f"requeued after preemption; resumes from checkpoint step {job.checkpoint_step}"


def report_is_stale(job: scheduler_pb2.Job | None, report: scheduler_pb2.JobReport) -> bool:
    """Whether a report speaks of an attempt that is no longer wanted (the job is gone,
    ended, requeued, or placed again since): the trainer should stop it."""
    return job is None or job.attempt != report.attempt or job.state not in HOLDING


def sent_by_its_trainer(subject: str, report: scheduler_pb2.JobReport) -> bool:
    """Whether a report arrived on the subject of the trainer it names (permissions let
    a trainer's NATS user publish only on its own)."""
    try:
        return subject == subjects.job_report(report.instance_id)
    except ValueError:  # an instance id that cannot be a subject token
        return False


def from_an_assigned_trainer(job: scheduler_pb2.Job, report: scheduler_pb2.JobReport) -> bool:
    """Whether the reporting trainer is one the job's current attempt was placed on: no
    other trainer may mark it done, fail it or swap its checkpoint."""
    return any(p.instance_id == report.instance_id for p in job.placement)


def report_steps(job: scheduler_pb2.Job, report: scheduler_pb2.JobReport) -> list[ReportStep]:
    """What a (current) report does to its job, in order."""
    has_progress = bool(report.progress.step or report.checkpoint_step)
    scheduled = job.state == S.JOB_STATE_SCHEDULED
    if report.state == S.JOB_STATE_RUNNING:
        return [
            *([Move(S.JOB_STATE_RUNNING, "running")] if scheduled else []),
            *([RecordProgress()] if has_progress else []),
        ]
    steps: list[ReportStep] = [RecordProgress()] if has_progress else []
    if scheduled and report.state != S.JOB_STATE_FAILED:
        steps.append(Move(S.JOB_STATE_RUNNING, "running"))
    if report.result:
        steps.append(SetResult(report.result))
    if report.state == S.JOB_STATE_PREEMPTED:
        return [*steps, Move(S.JOB_STATE_PREEMPTED, report.reason), RequeuePreempted()]
    return [*steps, Move(report.state, report.reason)]
