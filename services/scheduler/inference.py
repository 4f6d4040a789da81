"""Placing generations on inference workers: queue, choose, lease, recover.

The gateway hands each generation to the scheduler (NATS request on
`llmos.sched.generate`); it waits in a bounded per-model `FairShareQueue` (priority
classes, then token-weighted fair share between tenants) until a worker that has the
model loaded has a free slot (`SlotPool` with reservations; `place` picks the least
loaded). The scheduler then sends it to that worker alone, which streams the answer
straight to the gateway's inbox and reports `started` (first chunk out) and `finished`
(slot free, true token count) on `llmos.sched.progress`.

A model that no worker has loaded but some worker has in its models directory is loaded
on demand by the least loaded such worker; the work waits in the queue meanwhile.

Leases: a dispatched generation is held against its worker. If the worker goes silent
(declared dead by the heartbeat table), a generation that has not streamed anything is
put back at the head of the queue and runs elsewhere; one that had started streaming
ends with UNAVAILABLE, saying so, because resending half an answer is not the same answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass

import grpc
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from llmos import subjects
from llmos.errors import LLMOSError, NotFound, ResourceExhausted, Unavailable
from llmos.priority import PriorityClass
from llmos.rpc import relayed_error
from llmos.runner import ServiceContext
from llmos.v1 import common_pb2, inference_pb2, worker_pb2, worker_pb2_grpc
from llmos.work import domain_error, work_error
from services.scheduler.capacity import Reservation, SlotPool, next_admissible
from services.scheduler.fairshare import FairShareQueue, WorkItem, check_class_allowed
from services.scheduler.options import SchedulerOptions
from services.scheduler.placement import WorkerView, place
from services.scheduler.workers import WorkerTable

log = logging.getLogger("llmos.scheduler.inference")

DISPATCH_TIMEOUT_S = 5.0
LOAD_TIMEOUT_S = 300.0
TICK_S = 0.25


@dataclass
class Lease:
    item: WorkItem
    model: str
    worker: str
    started: bool = False
    since: float = 0.0


class InferenceDispatcher:
    """The scheduler's half of every generation."""

    def __init__(self, ctx: ServiceContext, workers: WorkerTable, options: SchedulerOptions):
        self._ctx = ctx
        self._workers = workers
        self._options = options
        self._queues: dict[str, FairShareQueue] = {}
        self._pools: dict[str, SlotPool] = {}
        self._leases: dict[str, Lease] = {}
        self._busy: Counter[str] = Counter()  # worker -> generations leased to it
        self._subscriptions: list[Subscription] = []
        self._ticker: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._unserved_since: dict[str, float] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._started = time.monotonic()

    async def start(self) -> None:
        nc = self._ctx.nats
        self._subscriptions = [
            # a queue group: with several schedulers each generation reaches exactly one
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
        for task in (self._ticker, *self._sends, *self._loading.values()):
            if task is not None:
                task.cancel()

    # -- counters ------------------------------------------------------------------------

    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def served_tokens(self) -> Counter[str]:
        """Tokens dispatched per tenant (all models and classes)."""
        totals: Counter[str] = Counter()
        for queue in self._queues.values():
            for (tenant, _), tokens in queue.served.items():
                totals[tenant] += tokens
        return totals

    # -- messages ------------------------------------------------------------------------

    async def _on_submit(self, msg: Msg) -> None:
        reply = inference_pb2.ScheduleReply(scheduler=self._ctx.instance.instance_id)
        try:
            request = inference_pb2.ScheduledGenerate.FromString(msg.data)
            work = request.work
            priority = PriorityClass.parse(request.priority)
            check_class_allowed(self._options.tenant_classes, work.tenant, priority)
            self._ensure_served(work.model)
            queue = self._queue(work.model)
            item = WorkItem(
                item_id=work.request_id,
                tenant=work.tenant,
                priority=priority,
                cost=max(int(request.cost), 1),
                enqueued_at=time.monotonic(),
                payload=work,
            )
            if item.item_id not in self._leases and item.item_id not in queue:
                queue.push(item)  # a resubmission of what is already here is a no-op
            reply.queued = len(queue)
        except LLMOSError as exc:
            reply.error.CopyFrom(work_error(exc))
        await msg.respond(reply.SerializeToString())
        self._dispatch()

    async def _on_progress(self, msg: Msg) -> None:
        progress = inference_pb2.WorkProgress.FromString(msg.data)
        lease = self._leases.get(progress.request_id)
        if lease is None or lease.worker != progress.worker:
            return
        if progress.started:
            lease.started = True
        if progress.finished:
            self._release(progress.request_id, progress.worker)
            if progress.tokens:
                self._queue(lease.model).settle(
                    lease.item.tenant, lease.item.priority, lease.item.cost, int(progress.tokens)
                )
            self._dispatch()

    async def _on_cancel(self, msg: Msg) -> None:
        """The caller went away: drop the request if it is still waiting."""
        request_id = msg.data.decode(errors="replace")
        for queue in self._queues.values():
            if queue.remove(request_id) is not None:
                return

    # -- loading models on demand ------------------------------------------------------------

    def _ensure_served(self, model: str) -> None:
        """NOT_FOUND unless some live worker has `model` loaded or can load it; in the
        latter case ask the least loaded such worker to load it (once at a time)."""
        alive = self._workers.alive()
        if any(model in w.loaded_models for w in alive) or model in self._loading:
            return
        candidates = [w for w in alive if model in w.available_models]
        if not candidates:
            if time.monotonic() - self._started < self._options.worker_warmup_s:
                return  # not every worker has been heard from yet: queue it meanwhile
            raise NotFound(f"model {model!r} is not available on any worker")
        chosen = min(
            candidates,
            key=lambda w: (
                (self._busy[w.instance.instance_id] + w.slots - w.free_slots) / max(w.slots, 1)
            ),
        )
        task = asyncio.create_task(self._load(model, chosen.instance))
        self._loading[model] = task
        task.add_done_callback(lambda _: self._loading.pop(model, None))

    async def _load(self, model: str, worker: common_pb2.ServiceInstance) -> None:
        log.info(
            "asking a worker to load a model", extra={"model": model, "worker": worker.instance_id}
        )
        try:
            async with grpc.aio.insecure_channel(worker.address) as channel:
                await worker_pb2_grpc.InferenceWorkerStub(channel).LoadModel(
                    worker_pb2.LoadModelRequest(model=model), timeout=LOAD_TIMEOUT_S
                )
        except grpc.aio.AioRpcError as exc:
            error = relayed_error(exc)
            log.warning("model load failed", extra={"model": model, "error": str(error)})
            queue = self._queues.get(model)
            if queue is not None:
                for item in list(queue.queued()):
                    queue.remove(item.item_id)
                    await self._fail(item.payload, error)
            return
        # the worker's next heartbeat lists the model; the tick then dispatches

    # -- dispatching -----------------------------------------------------------------------

    def _queue(self, model: str) -> FairShareQueue:
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = FairShareQueue(self._options.queue_capacity)
            self._pools[model] = SlotPool(0, self._reservations())
        return queue

    def _reservations(self) -> list[Reservation]:
        if not self._options.critical_headroom:
            return []
        return [
            Reservation(
                self._options.critical_headroom, priority=PriorityClass.CRITICAL, headroom=True
            )
        ]

    def _dispatch(self) -> None:
        """Start every queued generation that has a worker slot now."""
        alive = self._workers.alive()
        for model, queue in self._queues.items():
            if not len(queue):
                continue
            views = [
                WorkerView(
                    w.instance.instance_id,
                    w.slots,
                    # after a restart the worker's own count is the better one until
                    # its running generations (leased by the previous run) finish
                    busy=max(self._busy[w.instance.instance_id], w.slots - w.free_slots),
                    models=set(w.loaded_models),
                )
                for w in alive
                if model in w.loaded_models
            ]
            pool = self._pools[model]
            pool.total = sum(v.slots for v in views)
            while True:
                item = next_admissible(queue, pool)
                if item is None:
                    break
                placement = place(views, model)
                if placement is None:  # the pool's view ran ahead of the workers'
                    pool.release(item.tenant, item.priority)
                    queue.requeue_front(item)
                    break
                placement.worker.busy += 1
                self._lease(item, model, placement.worker.worker_id)

    def _lease(self, item: WorkItem, model: str, worker: str) -> None:
        self._leases[item.item_id] = Lease(item, model, worker, since=time.monotonic())
        self._busy[worker] += 1
        task = asyncio.create_task(self._send(item, worker))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, item: WorkItem, worker: str) -> None:
        work: inference_pb2.GenerateWork = item.payload
        try:
            answer = await self._ctx.nats.request(
                subjects.worker_generate(worker),
                work.SerializeToString(),
                timeout=DISPATCH_TIMEOUT_S,
            )
            ack = inference_pb2.GenerateChunk.FromString(answer.data)
        except (NoRespondersError, NatsTimeout, TimeoutError):
            log.warning("worker did not take a generation", extra={"worker": worker})
            self._give_back(item.item_id, worker)
            return
        if ack.HasField("error"):
            error = domain_error(ack.error)
            if isinstance(error, ResourceExhausted):
                self._give_back(item.item_id, worker)  # full after all: the next tick retries
            elif self._release(item.item_id, worker) is not None:
                await self._fail(work, error)

    def _release(self, request_id: str, worker: str | None = None) -> Lease | None:
        """End a lease (only if it is `worker`'s, when given: the same request may have
        been handed back and leased again since)."""
        lease = self._leases.get(request_id)
        if lease is not None and (worker is None or lease.worker == worker):
            del self._leases[request_id]
            self._busy[lease.worker] -= 1
            if self._busy[lease.worker] <= 0:
                del self._busy[lease.worker]
            self._pools[lease.model].release(lease.item.tenant, lease.item.priority)
            return lease
        return None

    def _give_back(self, request_id: str, worker: str | None = None) -> None:
        """Requeue a leased generation that has not started, at the head of its lane."""
        lease = self._release(request_id, worker)
        if lease is not None:
            self._queue(lease.model).requeue_front(lease.item)

    async def _fail(self, work: inference_pb2.GenerateWork, error: LLMOSError) -> None:
        chunk = inference_pb2.GenerateChunk(
            request_id=work.request_id, done=True, finish_reason="error", error=work_error(error)
        )
        with contextlib.suppress(Exception):
            await self._ctx.nats.publish(work.reply_to, chunk.SerializeToString())

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self._recover()
                await self._expire_unserved()
                self._dispatch()
            except Exception:
                log.exception("dispatch tick failed")

    async def _expire_unserved(self) -> None:
        """Fail work queued for a model that no live worker has served for a while, rather
        than let callers wait for a worker that is not coming."""
        served = {m for w in self._workers.alive() for m in w.loaded_models}
        now = time.monotonic()
        for model, queue in self._queues.items():
            if model in served or model in self._loading or not len(queue):
                self._unserved_since.pop(model, None)
                continue
            since = self._unserved_since.setdefault(model, now)
            limit = self._options.unserved_timeout_s
            if now - since < limit:
                continue
            error = Unavailable(f"no worker has served model {model!r} for {limit:g}s; retry later")
            for item in list(queue.queued()):
                queue.remove(item.item_id)
                await self._fail(item.payload, error)
            del self._unserved_since[model]

    async def _recover(self) -> None:
        """Hand back the work of workers declared dead."""
        alive = {w.instance.instance_id for w in self._workers.alive()}
        for request_id, lease in list(self._leases.items()):
            if lease.worker in alive:
                continue
            if not lease.started:
                log.warning(
                    "worker lost before streaming: requeued",
                    extra={"request": request_id, "worker": lease.worker},
                )
                self._give_back(request_id)
            else:
                self._release(request_id)
                await self._fail(
                    lease.item.payload,
                    Unavailable(
                        f"worker {lease.worker} was lost after the answer had started "
                        "streaming; retry the request"
                    ),
                )
