"""The scheduler's half of every generation, over NATS: a thin adapter that turns
messages into events for the generation rules (`services.scheduler.generations`) and
carries out the actions they return.

The gateway hands each generation over on `llmos.sched.generate` (a queue group: with
several schedulers each generation reaches exactly one). A leased generation is sent to
its worker alone (`llmos.work.generate.<worker>`), which streams the answer straight to
the gateway's inbox and reports `started` and `finished` on `llmos.sched.progress`.
Model loads, on demand or for a deployment, are the worker's `LoadModel` RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any

import grpc
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from llmos import subjects, tracing
from llmos.callers import WORKER
from llmos.errors import LLMOSError, Unavailable
from llmos.identity import secure_channel
from llmos.priority import PriorityClass
from llmos.rpc import relayed_error
from llmos.runner import ServiceContext
from llmos.v1 import inference_pb2, worker_pb2, worker_pb2_grpc
from llmos.work import domain_error, work_error
from llmos.workers import INFERENCE_WORKER, WorkerTable
from services.scheduler import metrics
from services.scheduler.fairshare import WorkItem
from services.scheduler.generations import (
    Action,
    Fail,
    GenerationBoard,
    Load,
    ModelSource,
    Requeued,
    Send,
    WorkerState,
)
from services.scheduler.options import SchedulerOptions

log = logging.getLogger("llmos.scheduler.inference")

DISPATCH_TIMEOUT_S = 5.0
LOAD_TIMEOUT_S = 600.0
TICK_S = 0.25


class InferenceDispatcher:
    """Carries generations between the gateway, the rules and the workers."""

    def __init__(self, ctx: ServiceContext, workers: WorkerTable, options: SchedulerOptions):
        self._ctx = ctx
        self._workers = workers
        self._clock = time.monotonic  # the one the worker table is fed with
        self.board = GenerationBoard(options, started_at=self._clock())
        self._subscriptions: list[Subscription] = []
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        nc = self._ctx.nats
        self._subscriptions = [
            await nc.subscribe(
                subjects.SCHEDULE_GENERATE, queue=subjects.SCHEDULER_QUEUE, cb=self._on_submit
            ),
            await nc.subscribe(subjects.WORK_PROGRESS, cb=self._on_progress),
            await nc.subscribe(subjects.CANCEL_WORK, cb=self._on_cancel),
        ]
        self._ticker = asyncio.create_task(self._tick_forever(), name="inference-dispatch")

    async def close(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        for task in (self._ticker, *self._tasks):
            if task is not None:
                task.cancel()

    def _live(self) -> list[WorkerState]:
        """The live inference workers (serving or not), as the generation rules see them."""
        return [
            WorkerState(
                worker_id=s.instance.instance_id,
                slots=s.slots,
                free_slots=s.free_slots,
                loaded=frozenset(s.loaded_models),
                available=frozenset(s.available_models),
                serving=not s.unhealthy,
            )
            for s in self._workers.alive(self._clock(), INFERENCE_WORKER)
        ]

    # -- events from NATS ----------------------------------------------------------------

    async def _on_submit(self, msg: Msg) -> None:
        reply = inference_pb2.ScheduleReply(scheduler=self._ctx.instance.instance_id)
        actions: list[Action] = []
        try:
            request = inference_pb2.ScheduledGenerate.FromString(msg.data)
            work = request.work
            item = WorkItem(
                item_id=work.request_id,
                tenant=work.tenant,
                priority=PriorityClass.parse(request.priority),
                cost=max(int(request.cost), 1),
                enqueued_at=self._clock(),
                payload=work,
            )
            submitted = self.board.submit(item, work.model, self._live(), self._clock())
            reply.queued = submitted.queued
            actions = submitted.actions
        except LLMOSError as exc:
            reply.error.CopyFrom(work_error(exc))
        await msg.respond(reply.SerializeToString())
        await self._carry_out(actions)

    async def _on_progress(self, msg: Msg) -> None:
        progress = inference_pb2.WorkProgress.FromString(msg.data)
        actions = self.board.progress(
            progress.request_id,
            progress.worker,
            self._live(),
            started=progress.started,
            finished=progress.finished,
            tokens=int(progress.tokens),
        )
        await self._carry_out(actions)

    async def _on_cancel(self, msg: Msg) -> None:
        self.board.cancel(msg.data.decode(errors="replace"))

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self._carry_out(self.board.tick(self._live(), self._clock()))
                metrics.observe_generations(self.board.leased(), self.board.waiting())
                metrics.observe_workers(self._workers.alive(self._clock()))
            except Exception:
                log.exception("dispatch tick failed")

    # -- deployments (the scheduler's DeployModel RPC) -----------------------------------

    async def deploy(self, served: str, source: ModelSource) -> str:
        """Have a worker serve a registry version as `served`; the worker's instance id."""
        deployment = self.board.deploy(served, source, self._live(), self._clock())
        if deployment.load is not None:
            await self._load(deployment.load)
        return deployment.worker

    # -- actions -------------------------------------------------------------------------

    async def _carry_out(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._spawn(self._send(action))
            elif isinstance(action, Fail):
                await self._fail(action)
            elif isinstance(action, Load):
                self._spawn(self._load_in_background(action))
            elif isinstance(action, Requeued):
                log.warning(
                    "worker lost before streaming: requeued",
                    extra={"request": action.item.item_id, "worker": action.worker},
                )

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, send: Send) -> None:
        work: inference_pb2.GenerateWork = send.item.payload
        refusal: LLMOSError | None = None
        # from its arrival here (queue time included) until a worker took it; the work
        # keeps the gateway's context (it may be sent again), the copy sent carries this one
        with tracing.start(
            "scheduler schedule",
            work.traceparent,
            waited_s=self._clock() - send.item.enqueued_at,
            attributes={tracing.WORK_ID: work.request_id, "llmos.worker": send.worker},
        ) as span:
            sent = inference_pb2.GenerateWork()
            sent.CopyFrom(work)
            sent.traceparent = tracing.traceparent(span) or work.traceparent
            try:
                answer = await self._ctx.nats.request(
                    subjects.worker_generate(send.worker),
                    sent.SerializeToString(),
                    timeout=DISPATCH_TIMEOUT_S,
                )
            except (NoRespondersError, NatsTimeout, TimeoutError):
                log.warning("worker did not take a generation", extra={"worker": send.worker})
                span.set_attribute("llmos.outcome", "worker did not answer")
            else:
                ack = inference_pb2.GenerateChunk.FromString(answer.data)
                if not ack.HasField("error"):
                    return  # taken: the worker streams to the gateway and reports progress
                refusal = domain_error(ack.error)
                span.set_attribute("llmos.outcome", str(refusal))
        await self._carry_out(self.board.not_taken(work.request_id, send.worker, refusal))

    async def _fail(self, fail: Fail) -> None:
        work: inference_pb2.GenerateWork = fail.payload
        chunk = inference_pb2.GenerateChunk(
            request_id=work.request_id,
            done=True,
            finish_reason="error",
            error=work_error(fail.error),
        )
        with contextlib.suppress(Exception):
            await self._ctx.nats.publish(work.reply_to, chunk.SerializeToString())

    async def _load_in_background(self, load: Load) -> None:
        with contextlib.suppress(LLMOSError):  # the rules have failed the waiting work
            await self._load(load)

    async def _load(self, load: Load) -> None:
        """Ask the worker to load the model; tell the rules how it went."""
        log.info(
            "asking a worker to load a model", extra={"model": load.model, "worker": load.worker}
        )
        request = worker_pb2.LoadModelRequest(model=load.model)
        if load.source is not None:
            request.registry_tenant = load.source.tenant
            request.registry_model = load.source.model
            request.registry_version = load.source.version
        error: LLMOSError | None = Unavailable(f"loading {load.model!r} was interrupted; retry")
        address = self._workers.address(load.worker)
        try:
            if not address:
                raise Unavailable(f"worker {load.worker} is gone; retry")
            async with secure_channel(self._ctx.identity, address, WORKER) as channel:
                described = await worker_pb2_grpc.InferenceWorkerStub(channel).LoadModel(
                    request, timeout=LOAD_TIMEOUT_S
                )
            self._workers.loaded(load.worker, described.loaded_models)
            error = None
        except grpc.aio.AioRpcError as exc:
            error = relayed_error(exc)
        except LLMOSError as exc:
            error = exc
        finally:  # however it ends (a cancelled deployment too): the rules hear of it
            if error is not None:
                log.warning("model load failed", extra={"model": load.model, "error": str(error)})
            self._spawn(self._carry_out(self.board.loaded(load.model, error)))
        if error is not None:
            raise error
