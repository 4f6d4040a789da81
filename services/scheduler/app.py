"""The scheduler's API: the live cluster view and jobs.

The cluster view comes from the workers' heartbeats (what they offer and use, their
slots, which models they have loaded). Jobs are checked at submit against the trainers'
capacity and their configuration, kept in Redis with their lifecycle
(`services.scheduler.jobs`) and placed on trainers by `services.scheduler.training`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack

import grpc
from google.protobuf.json_format import MessageToDict
from nats.aio.msg import Msg

from llmos import subjects
from llmos.callers import current_caller, for_system_admin
from llmos.errors import InvalidArgument, NotFound
from llmos.model.names import MODEL_NAME
from llmos.modelstore import ModelStore
from llmos.runner import ServiceContext
from llmos.training import TrainingConfig, check_memory, memory_needed
from llmos.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from llmos.workers import TRAINER, WorkerTable
from services.scheduler.active_jobs import reconcile_active
from services.scheduler.cluster_view import cluster_seen_by, queues_of
from services.scheduler.fairshare import check_class_allowed
from services.scheduler.generations import ModelSource
from services.scheduler.inference import InferenceDispatcher
from services.scheduler.jobs import TERMINAL, JobStore, check_spec
from services.scheduler.options import SchedulerOptions
from services.scheduler.training import TrainingDispatcher


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):  # type: ignore[misc]
    def __init__(
        self,
        ctx: ServiceContext,
        workers: WorkerTable,
        inference: InferenceDispatcher,
        jobs: JobStore,
        training: TrainingDispatcher,
    ) -> None:
        self._ctx = ctx
        self._workers = workers
        self._inference = inference
        self._jobs = jobs
        self._training = training
        options: SchedulerOptions = ctx.options
        self._tenant_classes = options.tenant_classes

    def _instances(self, service: str) -> list[common_pb2.ServiceInstance]:
        return [w.instance for w in self._workers.alive(time.monotonic(), service)]

    async def GetClusterStatus(
        self, request: scheduler_pb2.GetClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ClusterStatus:
        board = self._inference.board
        active = await self._jobs.active()
        queued = common_pb2.JOB_STATE_QUEUED
        status = scheduler_pb2.ClusterStatus(
            workers=self._workers.alive(time.monotonic()),
            queued_requests=board.queued(),
            queued_jobs=sum(j.state == queued for j in active),
            tokens_served_by_tenant=dict(board.served_tokens()),
            queues=queues_of(
                ((g.priority.value, g.tenant) for g in board.waiting()),
                ((j.spec.priority, j.tenant) for j in active if j.state == queued),
            ),
        )
        internal = current_caller()
        viewer = internal.assertion if internal is not None else None
        if viewer is None or for_system_admin(viewer):  # a service, or a system admin
            return status
        own = {job.job_id for job in active if job.tenant == viewer.tenant}
        return cluster_seen_by(status, viewer.tenant, own)

    async def DeployModel(
        self, request: scheduler_pb2.DeployVersionRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.DeployVersionReply:
        if not MODEL_NAME.match(request.served_as):
            raise InvalidArgument("served_as", "must be lowercase letters, digits, - and _")
        if not request.tenant or not request.model:
            raise InvalidArgument("model", "a registry tenant and model are required")
        if request.version <= 0:
            raise InvalidArgument("version", "must be a version number (1, 2, ...)")
        source = ModelSource(request.tenant, request.model, int(request.version))
        worker = await self._inference.deploy(request.served_as, source)
        return scheduler_pb2.DeployVersionReply(worker=worker)

    async def SubmitJob(
        self, request: scheduler_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.Job:
        priority, config = check_spec(request.spec, self._instances(TRAINER))
        check_class_allowed(self._tenant_classes, request.tenant, priority)
        await check_inputs(
            ModelStore(self._ctx.links, request.tenant), config, request.tenant,
            request.spec.resources.memory_bytes,
        )  # fmt: skip
        job = await self._jobs.create(
            request.tenant, request.owner, request.spec, request.traceparent
        )
        self._training.wake()
        return job

    async def GetJob(
        self, request: scheduler_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.Job:
        return await self._jobs.get(request.tenant, request.job_id)

    async def ListJobs(
        self, request: scheduler_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListJobsResponse:
        jobs, token = await self._jobs.list(
            request.tenant, request.states, request.page_size, request.page_token
        )
        for job in jobs:  # a listing is polled; each job's loss curve is GetJob's
            job.ClearField("history")
        return scheduler_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(
        self, request: scheduler_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.Job:
        job = await self._jobs.get(request.tenant, request.job_id)
        reason = request.reason or f"cancelled by {job.owner or 'its tenant'}"
        job = await self._jobs.move(job, common_pb2.JOB_STATE_CANCELLED, reason)
        await self._training.cancelled(job)
        return job

    async def WatchJob(
        self, request: scheduler_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scheduler_pb2.Job]:
        job = await self._jobs.get(request.tenant, request.job_id)
        changed: asyncio.Queue[None] = asyncio.Queue()

        async def on_event(msg: Msg) -> None:
            changed.put_nowait(None)

        subscription = await self._ctx.nats.subscribe(subjects.job_event(job.job_id), cb=on_event)
        try:
            job = await self._jobs.get(request.tenant, request.job_id)  # after subscribing
            yield job
            while job.state not in TERMINAL:
                await changed.get()
                latest = await self._jobs.get(request.tenant, request.job_id)
                if latest.state != job.state or latest.updated_at != job.updated_at:
                    job = latest
                    yield job
        finally:
            await subscription.unsubscribe()


async def check_inputs(
    store: ModelStore, config: TrainingConfig, tenant: str, reserved_memory: int
) -> None:
    """The job's dataset and base model exist for its tenant (storage is asked now, so a
    typo is refused at submit rather than failing the job later)."""
    if config.dataset:
        try:
            dataset = await store.dataset(config.dataset)
        except NotFound:
            raise InvalidArgument(
                "spec.config.dataset", f"tenant {tenant!r} has no dataset {config.dataset!r}"
            ) from None
        if dataset.size == 0:
            raise InvalidArgument("spec.config.dataset", f"{config.dataset!r} is empty")
    if config.base_model:
        version = await store.version(config.base_model)
        if version is None:
            raise InvalidArgument(
                "spec.config.base_model", f"no model {config.base_model!r} is in the registry"
            )
        metadata = MessageToDict(version.metadata)
        shape = [
            int(metadata.get(k, 0)) for k in ("hidden_size", "num_hidden_layers", "vocab_size")
        ]
        if metadata.get("parameters") and all(shape):
            needed = memory_needed(config, int(metadata["parameters"]), *shape)
            check_memory(needed, reserved_memory)
        context = float(metadata.get("context_length", 0))
        if context and config.seq_len > context:
            raise InvalidArgument(
                "spec.config.seq_len",
                f"{config.seq_len} is above the context of {config.base_model!r}, "
                f"{int(context)} tokens",
            )


async def attach(
    ctx: ServiceContext, server: grpc.aio.Server, stack: AsyncExitStack
) -> Sequence[str]:
    """Follow worker heartbeats; register the scheduler's API."""
    workers = WorkerTable()
    heartbeats = await workers.follow(ctx.nats)
    stack.push_async_callback(heartbeats.unsubscribe)
    inference = InferenceDispatcher(ctx, workers, ctx.options)
    await inference.start()
    stack.push_async_callback(inference.close)
    audit = ctx.audit
    jobs = JobStore(
        ctx.redis, ctx.events, audit, max_active_per_tenant=ctx.options.tenant_max_active_jobs
    )
    # before any job is admitted or placed: caps count jobs from before they existed
    await reconcile_active(ctx.redis)
    training = TrainingDispatcher(ctx, workers, jobs, ctx.options)
    await training.start()
    stack.push_async_callback(training.close)
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(
        SchedulerServicer(ctx, workers, inference, jobs, training), server
    )
    return [scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name]
