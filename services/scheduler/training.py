"""Running training jobs on trainers: gang placement, reservations, preemption, leases.

One scheduler at a time places jobs (a leadership lease in Redis, renewed every tick; a
standby takes over within seconds of the leader's death). Every scheduler answers the
trainers' reports (a NATS queue group), because each report is a compare-and-set on the
job in Redis, the only state there is: a scheduler killed at any moment loses nothing,
and the next leader rebuilds who holds what from the jobs' placements.

Each tick the leader:
1. hands back the work of lost trainers: a placed trainer that stopped heartbeating, or
   one that does not list the attempt in its heartbeats for a grace period (a lease that
   lapsed) — the job goes back to QUEUED and resumes from its last checkpoint;
2. places queued jobs in priority order (within a class, the tenant holding the fewest
   processes first, then the oldest job), each gang whole or not at all, honouring
   reservations;
3. when a job does not fit, preempts the fewest lower-priority running jobs that make room:
   they are told to checkpoint, report PREEMPTED, and are requeued. While that is under
   way (or once a blocked job has waited `backfill_limit_s`), jobs of its class or lower
   are not started in the capacity being freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError

from llmos import subjects
from llmos.errors import LLMOSError
from llmos.lease import Lease
from llmos.modelstore import ModelStore
from llmos.priority import PriorityClass
from llmos.runner import ServiceContext
from llmos.v1 import common_pb2, scheduler_pb2
from services.scheduler.gang import GangRequest, Holding, TrainerPool, victims_for
from services.scheduler.jobs import JobStore
from services.scheduler.options import SchedulerOptions
from services.scheduler.workers import MISSED_HEARTBEATS, WorkerTable

log = logging.getLogger("llmos.scheduler.training")

S = common_pb2.JobState
HOLDING = (S.JOB_STATE_SCHEDULED, S.JOB_STATE_RUNNING)
TICK_S = 0.5
ASSIGN_TIMEOUT_S = 5.0
PREEMPT_RESEND_S = 10.0
LEADER_KEY = "llmos:sched:training-leader"


def request_of(job: scheduler_pb2.Job) -> GangRequest:
    return GangRequest(
        job_id=job.job_id,
        tenant=job.tenant,
        priority=PriorityClass.parse(job.spec.priority),
        per_process=job.spec.resources,
        processes=max(job.spec.resources.processes, 1),
    )


def holding_of(job: scheduler_pb2.Job) -> Holding:
    return Holding(
        request_of(job),
        tuple((p.instance_id, p.processes) for p in job.placement),
        started=job.scheduled_at.seconds + job.scheduled_at.nanos / 1e9,
    )


class TrainingDispatcher:
    """Places queued training jobs and keeps the running ones honest."""

    def __init__(
        self, ctx: ServiceContext, workers: WorkerTable, jobs: JobStore, options: SchedulerOptions
    ) -> None:
        self._ctx = ctx
        self._workers = workers
        self._jobs = jobs
        self._options = options
        self._started = time.monotonic()
        heartbeat = ctx.settings.heartbeat_s
        #: how long a trainer may be unheard of, or silent about an attempt, before its
        #: work is handed back
        self._grace_s = max(options.worker_warmup_s, (MISSED_HEARTBEATS + 1) * heartbeat)
        self._leadership = Lease(
            ctx.redis,
            LEADER_KEY,
            ctx.instance.instance_id,
            ctx.settings.heartbeat_s,
        )
        self._missing_since: dict[str, float] = {}
        self._preempting: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self._ctx.nats.subscribe(
            subjects.JOB_REPORT, queue=subjects.SCHEDULER_QUEUE, cb=self._on_report
        )
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        """Look at the queue now (a job arrived or ended)."""
        self._wake.set()

    async def cancelled(self, job: scheduler_pb2.Job) -> None:
        """Tell the trainers of a job just cancelled to stop it (keeping a checkpoint)."""
        await self._control(job, "cancel", job.reason)
        self.wake()

    # -- the leader's loop -----------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                if await self._is_leader():
                    await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("training dispatch tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            self._wake.clear()

    async def _is_leader(self) -> bool:
        return await self._leadership.hold()

    def _trainers(self) -> dict[str, scheduler_pb2.WorkerStatus]:
        return {
            w.instance.instance_id: w
            for w in self._workers.alive()
            if w.instance.service == "trainer"
        }

    async def _tick(self) -> None:
        trainers = self._trainers()
        jobs = await self._jobs.active()
        now = time.monotonic()
        for job in jobs:
            if job.state in HOLDING:
                lost = self._lost_trainer(job, trainers, now)
                if lost:
                    await self._hand_back(job, lost)
            elif job.state == S.JOB_STATE_PREEMPTED:  # a scheduler died between the moves
                await self._requeue_preempted(job)
        jobs = await self._jobs.active()
        holding = [j for j in jobs if j.state in HOLDING]
        queued = [j for j in jobs if j.state == S.JOB_STATE_QUEUED]
        capacity = {tid: w.instance.capacity for tid, w in trainers.items()}
        pool = TrainerPool(
            capacity, [holding_of(j) for j in holding], self._options.job_reservations
        )
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
        barrier: PriorityClass | None = None  # jobs of this class or lower wait
        for job in queued:
            request = request_of(job)
            if barrier is not None and request.priority >= barrier:
                continue
            placement = pool.place(request)
            if placement is not None:
                await self._assign(job, placement)
                held_by_tenant[job.tenant] = held_by_tenant.get(job.tenant, 0) + request.processes
                continue
            # jobs already told to make room count as gone; the others may be chosen
            leaving = [h for h in pool.holdings if h.request.job_id in self._preempting]
            staying = [h for h in pool.holdings if h not in leaving]
            victims = victims_for(
                request, capacity, staying, running_ids - set(self._preempting),
                self._options.job_reservations,
            )  # fmt: skip
            waited = time.time() - job.updated_at.seconds
            if victims is not None:  # room is being made: wait for it
                for victim in victims:
                    await self._preempt(by_id[victim.request.job_id], job)
                for holding_job in leaving:
                    await self._preempt(by_id[holding_job.request.job_id], job, resend=True)
                barrier = request.priority
            elif waited > self._options.backfill_limit_s:
                barrier = request.priority

    def _lost_trainer(
        self, job: scheduler_pb2.Job, trainers: dict[str, scheduler_pb2.WorkerStatus], now: float
    ) -> str:
        """Why the job's lease lapsed, or "" while it holds."""
        if now - self._started < self._grace_s:
            return ""  # just started: trainers have not all been heard yet
        key = f"{job.job_id}@{job.attempt}"
        for placed in job.placement:
            status = trainers.get(placed.instance_id)
            if status is None:
                return f"its trainer {placed.instance_id} stopped heartbeating"
            if key in status.running_jobs:
                self._missing_since.pop(key, None)
                continue
            since = self._missing_since.setdefault(key, now)
            if now - since > self._grace_s:
                return f"its trainer {placed.instance_id} no longer runs it"
        return ""

    async def _hand_back(self, job: scheduler_pb2.Job, why: str) -> None:
        await self._control(job, "abort", why)
        reason = f"{why}; requeued to resume from checkpoint step {job.checkpoint_step}"
        try:
            await self._jobs.move(job, S.JOB_STATE_QUEUED, reason)
        except LLMOSError:
            return  # it moved meanwhile (a report landed): nothing to hand back
        log.warning("job handed back", extra={"job": job.job_id, "reason": reason})

    async def _requeue_preempted(self, job: scheduler_pb2.Job) -> None:
        reason = f"requeued after preemption; resumes from checkpoint step {job.checkpoint_step}"
        with contextlib.suppress(LLMOSError):
            await self._jobs.move(job, S.JOB_STATE_QUEUED, reason)

    async def _assign(self, job: scheduler_pb2.Job, placement: tuple[tuple[str, int], ...]) -> None:
        """SCHEDULED on `placement`, then each trainer told its share (node 0 first: it
        names the rendezvous the others join). A refusal or silence undoes it all."""
        try:
            job = await self._jobs.move(
                job,
                S.JOB_STATE_SCHEDULED,
                f"placed on {len(placement)} trainer(s)",
                [scheduler_pb2.Placement(instance_id=t, processes=n) for t, n in placement],
            )
        except LLMOSError:
            return  # cancelled meanwhile
        rendezvous = ""
        for rank, (trainer, _) in enumerate(placement):
            assignment = scheduler_pb2.JobAssignment(job=job, node_rank=rank, rendezvous=rendezvous)
            try:
                msg = await self._ctx.nats.request(
                    subjects.trainer_assign(trainer),
                    assignment.SerializeToString(),
                    timeout=ASSIGN_TIMEOUT_S,
                )
                reply = scheduler_pb2.JobAssignmentReply.FromString(msg.data)
            except (TimeoutError, NoRespondersError):
                reply = scheduler_pb2.JobAssignmentReply(reason="it did not answer")
            if not reply.accepted:
                await self._control(job, "abort", reply.reason)
                why = f"trainer {trainer} did not take it ({reply.reason}); requeued"
                with contextlib.suppress(LLMOSError):
                    await self._jobs.move(job, S.JOB_STATE_QUEUED, why)
                return
            rendezvous = rendezvous or reply.rendezvous
        log.info(
            "job placed",
            extra={"job": job.job_id, "attempt": job.attempt, "placement": str(placement)},
        )

    async def _preempt(
        self, victim: scheduler_pb2.Job, winner: scheduler_pb2.Job, resend: bool = False
    ) -> None:
        """Tell `victim` to checkpoint and stop; repeated now and then in case the word
        was lost (the trainer ignores repeats)."""
        now = time.monotonic()
        if victim.job_id in self._preempting and (
            not resend or now - self._preempting[victim.job_id] < PREEMPT_RESEND_S
        ):
            return
        self._preempting[victim.job_id] = now
        priority = PriorityClass.parse(winner.spec.priority).name.lower()
        await self._control(victim, "preempt", f"preempted for {priority} job {winner.job_id}")
        log.info("preempting", extra={"job": victim.job_id, "for": winner.job_id})

    async def _control(self, job: scheduler_pb2.Job, action: str, reason: str) -> None:
        control = scheduler_pb2.JobControl(
            job_id=job.job_id, attempt=job.attempt, action=action, reason=reason
        )
        for placed in job.placement:
            await self._ctx.nats.publish(
                subjects.trainer_control(placed.instance_id), control.SerializeToString()
            )

    # -- reports from trainers (every scheduler) ----------------------------------------

    async def _on_report(self, msg: Msg) -> None:
        report = scheduler_pb2.JobReport.FromString(msg.data)
        stop = False
        try:
            stop = await self._apply(report)
        except LLMOSError as exc:  # e.g. cancelled meanwhile: the report is moot
            log.info("job report not applied", extra={"job": report.job_id, "why": str(exc)})
        except Exception:
            log.exception("job report failed", extra={"job": report.job_id})
            return  # no answer: the trainer retries
        await msg.respond(scheduler_pb2.JobReportReply(stop=stop).SerializeToString())

    async def _apply(self, report: scheduler_pb2.JobReport) -> bool:
        """Apply a trainer's report; True if that attempt is no longer wanted."""
        job = await self._jobs.current(report.job_id)
        if job is None or job.attempt != report.attempt or job.state not in (*HOLDING,):
            return True
        replaced = job.checkpoint_blob
        stop = await self._record(job, report)
        if replaced and report.checkpoint_blob and replaced != report.checkpoint_blob:
            # the job now resumes from the new checkpoint: the old one can go
            with contextlib.suppress(LLMOSError):
                await ModelStore(self._ctx.registry, job.tenant).forget(replaced)
        return stop

    async def _record(self, job: scheduler_pb2.Job, report: scheduler_pb2.JobReport) -> bool:
        if report.state == S.JOB_STATE_RUNNING:
            if job.state == S.JOB_STATE_SCHEDULED:
                job = await self._jobs.move(job, S.JOB_STATE_RUNNING, "running")
            if report.progress.step or report.checkpoint_step:
                await self._jobs.record_progress(job, report)
            return False
        if report.checkpoint_step or report.progress.step:
            job = await self._jobs.record_progress(job, report)
        if job.state == S.JOB_STATE_SCHEDULED and report.state != S.JOB_STATE_FAILED:
            job = await self._jobs.move(job, S.JOB_STATE_RUNNING, "running")
        if report.result:
            job.result = report.result
        if report.state == S.JOB_STATE_PREEMPTED:
            job = await self._jobs.move(job, S.JOB_STATE_PREEMPTED, report.reason)
            self._preempting.pop(job.job_id, None)
            await self._requeue_preempted(job)
        else:
            await self._jobs.move(job, report.state, report.reason)
        self.wake()
        return False
