"""Running training jobs on trainers: the adapter that carries out the leader's decisions
(`services.scheduler.training_plan`) over Redis and NATS.

One scheduler at a time places jobs (a leadership lease in Redis, renewed every tick; a
standby takes over within seconds of the leader's death). Every scheduler answers the
trainers' reports (a NATS queue group), because each report is a compare-and-set on the
job in Redis, the only state there is: a scheduler killed at any moment loses nothing,
and the next leader rebuilds who holds what from the jobs' placements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError

from llmos import subjects, tracing
from llmos.errors import LLMOSError
from llmos.lease import Lease
from llmos.modelstore import ModelStore
from llmos.runner import ServiceContext
from llmos.v1 import common_pb2, scheduler_pb2
from llmos.workers import MISSED_HEARTBEATS, TRAINER, WorkerTable
from services.scheduler import metrics
from services.scheduler.jobs import JobStore
from services.scheduler.options import SchedulerOptions
from services.scheduler.training_plan import (
    Assign,
    HandBack,
    Move,
    RecordProgress,
    Requeue,
    RequeuePreempted,
    SetResult,
    TrainingAction,
    TrainingPlanner,
    from_an_assigned_trainer,
    report_is_stale,
    report_steps,
    requeue_reason,
    sent_by_its_trainer,
)

log = logging.getLogger("llmos.scheduler.training")

S = common_pb2.JobState
TICK_S = 0.5
ASSIGN_TIMEOUT_S = 5.0
LEADER_KEY = "llmos:sched:training-leader"


class TrainingDispatcher:
    """Places queued training jobs and keeps the running ones honest."""

    def __init__(
        self, ctx: ServiceContext, workers: WorkerTable, jobs: JobStore, options: SchedulerOptions
    ) -> None:
        self._ctx = ctx
        self._workers = workers
        self._jobs = jobs
        heartbeat = ctx.settings.heartbeat_s
        self._planner = TrainingPlanner(
            options,
            started_at=time.monotonic(),
            grace_s=max(options.worker_warmup_s, (MISSED_HEARTBEATS + 1) * heartbeat),
        )
        self._leadership = Lease(ctx.redis, LEADER_KEY, ctx.instance.instance_id, heartbeat)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self._ctx.nats.subscribe(
            subjects.ALL_JOB_REPORTS, queue=subjects.SCHEDULER_QUEUE, cb=self._on_report
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
                if await self._leadership.hold():
                    await self._tick()
                else:
                    metrics.observe_jobs(())  # the leader reports them
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("training dispatch tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            self._wake.clear()

    async def _tick(self) -> None:
        now = time.monotonic()
        alive = {w.instance.instance_id: w for w in self._workers.alive(now, TRAINER)}
        for action in self._planner.leases(await self._jobs.active(), alive, now):
            await self._carry_out(action)
        jobs = await self._jobs.active()  # as the moves left them
        metrics.observe_jobs(jobs)
        # a trainer that lost NATS or Redis keeps its jobs but gets no new one
        serving = {key: w for key, w in alive.items() if not w.unhealthy}
        for action in self._planner.placements(jobs, serving, now, time.time()):
            await self._carry_out(action)

    async def _carry_out(self, action: TrainingAction) -> None:
        if isinstance(action, HandBack):
            await self._hand_back(action.job, action.why)
        elif isinstance(action, Requeue):
            with contextlib.suppress(LLMOSError):
                await self._jobs.move(action.job, S.JOB_STATE_QUEUED, requeue_reason(action.job))
        elif isinstance(action, Assign):
            await self._assign(action.job, action.placement)
        else:
            await self._control(action.job, "preempt", action.reason)
            log.info("preempting", extra={"job": action.job.job_id, "why": action.reason})

    async def _hand_back(self, job: scheduler_pb2.Job, why: str) -> None:
        await self._control(job, "abort", why)
        reason = f"{why}; requeued to resume from checkpoint step {job.checkpoint_step}"
        try:
            await self._jobs.move(job, S.JOB_STATE_QUEUED, reason)
        except LLMOSError:
            return  # it moved meanwhile (a report landed): nothing to hand back
        log.warning("job handed back", extra={"job": job.job_id, "reason": reason})

    async def _assign(self, job: scheduler_pb2.Job, placement: tuple[tuple[str, int], ...]) -> None:
        """SCHEDULED on `placement`, then each trainer told its share (node 0 first: it
        names the rendezvous the others join). A refusal or silence undoes it all."""
        attributes = {
            tracing.JOB_ID: job.job_id,
            "llmos.trainers": ",".join(trainer for trainer, _ in placement),
        }
        with tracing.start("scheduler place job", job.traceparent, attributes=attributes) as span:
            span.set_attribute("llmos.outcome", await self._place(job, placement, span))

    async def _place(
        self, job: scheduler_pb2.Job, placement: tuple[tuple[str, int], ...], span: tracing.Span
    ) -> str:
        """`_assign`'s work; how it went, in a few words."""
        try:
            job = await self._jobs.move(
                job,
                S.JOB_STATE_SCHEDULED,
                f"placed on {len(placement)} trainer(s)",
                [scheduler_pb2.Placement(instance_id=t, processes=n) for t, n in placement],
            )
        except LLMOSError:
            return "cancelled meanwhile"
        span.set_attribute("llmos.attempt", job.attempt)
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
                return why
            rendezvous = rendezvous or reply.rendezvous
        log.info(
            "job placed",
            extra={"job": job.job_id, "attempt": job.attempt, "placement": str(placement)},
        )
        return "placed"

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
        if not sent_by_its_trainer(msg.subject, report):
            # only that trainer's NATS user may publish on its subject: a report naming
            # another trainer is forged, and left unanswered
            log.warning(
                "job report ignored: its subject names another trainer",
                extra={"subject": msg.subject, "job": report.job_id},
            )
            return
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
        if report_is_stale(job, report):
            return True
        assert job is not None  # a job that is gone makes its reports stale
        if not from_an_assigned_trainer(job, report):
            log.warning(
                "job report ignored: the job is not placed on its trainer",
                extra={"job": report.job_id, "trainer": report.instance_id},
            )
            return True
        replaced = job.checkpoint_blob
        for step in report_steps(job, report):
            if isinstance(step, RecordProgress):
                job = await self._jobs.record_progress(job, report)
            elif isinstance(step, Move):
                job = await self._jobs.move(job, step.state, step.reason)
            elif isinstance(step, SetResult):
                job.result = step.result
            elif isinstance(step, RequeuePreempted):
                self._planner.preempted(job.job_id)
                with contextlib.suppress(LLMOSError):
                    await self._jobs.move(job, S.JOB_STATE_QUEUED, requeue_reason(job))
        if report.state != S.JOB_STATE_RUNNING:
            self.wake()
        if replaced and report.checkpoint_blob and replaced != report.checkpoint_blob:
            # the job now resumes from the new checkpoint: the old one can go
            with contextlib.suppress(LLMOSError):
                await ModelStore(self._ctx.links, job.tenant).forget(replaced)
        return False
