"""The scheduler's rules for generations, as a state machine: events in, actions out.

Each generation waits in a bounded per-model `FairShareQueue` (priority classes, then
token-weighted fair share between tenants) until a worker that has the model loaded has
a free slot (`SlotPool` with reservations; `place` picks the least loaded). It is then
leased to that worker: `Send` it there. The worker reports `started` (first chunk out)
and `finished` (slot free, true token count), which settles the tenant's fair-share clock.

Which worker serves which model is decided here alone: a model no worker has loaded but
some worker has in its models directory is loaded on demand by the least loaded such
worker (`Load`), and a deployment names a registry version that the least loaded live
worker loads. The work waits in the queue meanwhile.

Leases: if a worker goes silent (declared dead by the worker table), a generation it has
not started streaming is put back at the head of its lane and runs elsewhere; one that
had started ends with UNAVAILABLE (`Fail`), because resending half an answer is not the
same answer. Work queued for a model that no live worker has served for a while fails
with UNAVAILABLE instead of waiting for a worker that is not coming.

Pure logic: no NATS, no Redis, no clock. Every event carries the time and the live
workers; the adapter (`services.scheduler.inference`) carries out the actions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmos.errors import LLMOSError, NotFound, ResourceExhausted, Unavailable
from llmos.priority import PriorityClass
from services.scheduler.capacity import Reservation, SlotPool, next_admissible
from services.scheduler.fairshare import FairShareQueue, WorkItem, check_class_allowed
from services.scheduler.options import SchedulerOptions
from services.scheduler.placement import WorkerView, place


@dataclass(frozen=True)
class WorkerState:
    """What the rules need to know of one live inference worker (from its heartbeat)."""

    worker_id: str
    slots: int
    free_slots: int
    loaded: frozenset[str] = frozenset()
    available: frozenset[str] = frozenset()  # in its models directory, loadable now
    #: False while its health says it cannot take work (lost NATS, Redis or Triton): it
    #: keeps what it holds (it is alive) but gets nothing new
    serving: bool = True


@dataclass(frozen=True)
class ModelSource:
    """A registry version a worker fetches to serve it under a name of its own."""

    tenant: str
    model: str
    version: int


@dataclass(frozen=True)
class Send:
    """Hand `item` (its payload is the work) to `worker`, which now holds its lease."""

    item: WorkItem
    worker: str


@dataclass(frozen=True)
class Fail:
    """End the generation whose work is `payload` with `error`, a sentence for the caller."""

    payload: Any
    error: LLMOSError


@dataclass(frozen=True)
class Load:
    """Ask `worker` to load `model` (from `source` in the registry, when given)."""

    model: str
    worker: str
    source: ModelSource | None = None


@dataclass(frozen=True)
class Requeued:
    """A generation `worker` had not started was put back in the queue (worth a log line:
    the worker was lost)."""

    item: WorkItem
    worker: str


Action = Send | Fail | Load | Requeued


@dataclass
class Lease:
    """A generation handed to a worker, held against it until it finishes."""

    item: WorkItem
    model: str
    worker: str
    started: bool = False


@dataclass(frozen=True)
class Submitted:
    """A generation accepted: how many wait for its model (itself included, unless it was
    dispatched at once), and what to do now."""

    queued: int
    actions: list[Action]


@dataclass(frozen=True)
class Deployment:
    """Where a deployed version is (to be) served, and the load to carry out if any."""

    worker: str
    load: Load | None


@dataclass
class GenerationBoard:
    """Queues, slots, leases and model loads of every model this scheduler dispatches."""

    options: SchedulerOptions
    started_at: float  # when this scheduler started: workers are still being heard from
    _queues: dict[str, FairShareQueue] = field(default_factory=dict)
    _pools: dict[str, SlotPool] = field(default_factory=dict)
    _leases: dict[str, Lease] = field(default_factory=dict)
    _loading: set[str] = field(default_factory=set)
    _unserved_since: dict[str, float] = field(default_factory=dict)

    # -- what callers may read ---------------------------------------------------------

    def queued(self, model: str | None = None) -> int:
        """Generations waiting (for `model`, or for every model)."""
        if model is not None:
            queue = self._queues.get(model)
            return len(queue) if queue is not None else 0
        return sum(len(q) for q in self._queues.values())

    def leased(self) -> Iterator[WorkItem]:
        """Every generation handed to a worker and not yet finished."""
        return (lease.item for lease in self._leases.values())

    def waiting(self) -> Iterator[WorkItem]:
        """Every generation waiting, for every model (no particular order)."""
        for queue in self._queues.values():
            yield from queue.queued()

    def served_tokens(self) -> Counter[str]:
        """Tokens dispatched per tenant (all models and classes)."""
        totals: Counter[str] = Counter()
        for queue in self._queues.values():
            for (tenant, _), tokens in queue.served.items():
                totals[tenant] += tokens
        return totals

    def lease(self, request_id: str) -> Lease | None:
        """The lease a generation holds now, if it was handed to a worker."""
        return self._leases.get(request_id)

    # -- events ------------------------------------------------------------------------

    def submit(
        self, item: WorkItem, model: str, workers: Sequence[WorkerState], now: float
    ) -> Submitted:
        """A generation arrived. Raises (the caller answers with the error) if its tenant
        may not use its class, no worker can serve the model, or the queue is full."""
        check_class_allowed(self.options.tenant_classes, item.tenant, item.priority)
        load = self._load_needed(model, workers, now)
        queue = self._queue(model)
        if item.item_id not in self._leases and item.item_id not in queue:
            queue.push(item)  # a resubmission of what is already here is a no-op
        queued = len(queue)
        actions: list[Action] = []
        if load is not None:  # decided only once the work is in: a refusal loads nothing
            self._loading.add(model)
            actions.append(load)
        return Submitted(queued, [*actions, *self._dispatch(workers)])

    def progress(
        self,
        request_id: str,
        worker: str,
        workers: Sequence[WorkerState],
        *,
        started: bool = False,
        finished: bool = False,
        tokens: int = 0,
    ) -> list[Action]:
        """A worker streamed the first chunk of, or finished, a generation it holds."""
        lease = self._leases.get(request_id)
        if lease is None or lease.worker != worker:
            return []
        if started:
            lease.started = True
        if not finished:
            return []
        self._release(request_id, worker)
        if tokens:
            item = lease.item
            self._queue(lease.model).settle(item.tenant, item.priority, item.cost, tokens)
        return self._dispatch(workers)

    def cancel(self, request_id: str) -> None:
        """The caller went away: drop the generation if it is still waiting."""
        for queue in self._queues.values():
            if queue.remove(request_id) is not None:
                return

    def not_taken(self, request_id: str, worker: str, refusal: LLMOSError | None) -> list[Action]:
        """The worker did not take a generation sent to it: it did not answer (`None`) or
        was full — the generation goes back to the head of its lane for the next tick —
        or it refused it for good, which ends the generation with that refusal."""
        if refusal is None or isinstance(refusal, ResourceExhausted):
            self._give_back(request_id, worker)
            return []
        lease = self._release(request_id, worker)
        return [] if lease is None else [Fail(lease.item.payload, refusal)]

    def deploy(
        self, served: str, source: ModelSource, workers: Sequence[WorkerState], now: float
    ) -> Deployment:
        """Serve a registry version as `served`: the worker serving it already, else the
        least loaded live worker, which loads it."""
        serving = next((w.worker_id for w in workers if served in w.loaded), None)
        if serving is not None:
            return Deployment(serving, None)
        if now - self.started_at < self.options.worker_warmup_s:
            raise Unavailable(
                "the scheduler has just started and not heard from every worker yet; retry "
                "in a few seconds"
            )
        healthy = [w for w in workers if w.serving]
        if not healthy:
            raise Unavailable(
                "no inference worker is running and serving to load the model; retry later"
            )
        if served in self._loading:
            raise Unavailable(f"{served!r} is being loaded already; retry when it is served")
        worker = self._least_loaded(healthy).worker_id
        self._loading.add(served)
        return Deployment(worker, Load(served, worker, source))

    def loaded(self, model: str, error: LLMOSError | None) -> list[Action]:
        """A load asked for finished; if it failed, the work waiting for it fails too."""
        self._loading.discard(model)
        if error is None:
            return []  # the worker's heartbeat lists the model; the next tick dispatches
        return self._fail_queued(model, error)

    def tick(self, workers: Sequence[WorkerState], now: float) -> list[Action]:
        """Periodic: hand back the work of lost workers, expire work nobody serves,
        dispatch whatever fits."""
        return [
            *self._recover(workers),
            *self._expire_unserved(workers, now),
            *self._dispatch(workers),
        ]

    # -- rules -------------------------------------------------------------------------

    def _load_needed(self, model: str, workers: Sequence[WorkerState], now: float) -> Load | None:
        """NOT_FOUND unless some live worker has `model` loaded or can load it; in the
        latter case the load of the least loaded such worker (once at a time). Workers
        not serving now count only for waiting: the work queues until one serves again
        (or the unserved timeout ends it), and nothing is loaded on them."""
        healthy = [w for w in workers if w.serving]
        if any(model in w.loaded for w in healthy) or model in self._loading:
            return None
        candidates = [w for w in healthy if model in w.available]
        if not candidates:
            if any(model in w.loaded or model in w.available for w in workers):
                return None  # only on workers not serving now: wait for them
            if now - self.started_at < self.options.worker_warmup_s:
                return None  # not every worker has been heard from yet: queue it meanwhile
            raise NotFound(f"model {model!r} is not available on any worker")
        return Load(model, self._least_loaded(candidates).worker_id)

    def _leased(self) -> Counter[str]:
        """Generations leased to each worker."""
        return Counter(lease.worker for lease in self._leases.values())

    def _least_loaded(self, workers: Iterable[WorkerState]) -> WorkerState:
        """The worker with the smallest share of its slots in use (then the fewest models)."""
        leased = self._leased()
        return min(
            workers,
            key=lambda w: (
                (leased[w.worker_id] + w.slots - w.free_slots) / max(w.slots, 1),
                len(w.loaded),
                w.worker_id,
            ),
        )

    def _queue(self, model: str) -> FairShareQueue:
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = FairShareQueue(
                self.options.queue_capacity, tenant_share=self.options.tenant_queue_share
            )
            self._pools[model] = SlotPool(0, self._reservations())
        return queue

    def _reservations(self) -> list[Reservation]:
        if not self.options.critical_headroom:
            return []
        return [
            Reservation(
                self.options.critical_headroom, priority=PriorityClass.CRITICAL, headroom=True
            )
        ]

    def _dispatch(self, workers: Sequence[WorkerState]) -> list[Action]:
        """Lease every queued generation that has a worker slot now."""
        actions: list[Action] = []
        leased = self._leased()
        for model, queue in self._queues.items():
            if not len(queue):
                continue
            views = [
                WorkerView(
                    w.worker_id,
                    w.slots,
                    # after a restart the worker's own count is the better one until
                    # its running generations (leased by the previous run) finish
                    busy=max(leased[w.worker_id], w.slots - w.free_slots),
                    models=set(w.loaded),
                )
                for w in workers
                if model in w.loaded and w.serving
            ]
            pool = self._pools[model]
            pool.total = sum(v.slots for v in views)
            while (item := next_admissible(queue, pool)) is not None:
                chosen = place(views, model)
                if chosen is None:  # the pool's view ran ahead of the workers'
                    pool.release(item.tenant, item.priority)
                    queue.requeue_front(item)
                    break
                chosen.busy += 1
                leased[chosen.worker_id] += 1
                self._leases[item.item_id] = Lease(item, model, chosen.worker_id)
                actions.append(Send(item, chosen.worker_id))
        return actions

    def _release(self, request_id: str, worker: str | None = None) -> Lease | None:
        """End a lease (only if it is `worker`'s, when given: the same request may have
        been handed back and leased again since)."""
        lease = self._leases.get(request_id)
        if lease is None or (worker is not None and lease.worker != worker):
            return None
        del self._leases[request_id]
        self._pools[lease.model].release(lease.item.tenant, lease.item.priority)
        return lease

    def _give_back(self, request_id: str, worker: str | None = None) -> None:
        """Requeue a leased generation that has not started, at the head of its lane."""
        lease = self._release(request_id, worker)
        if lease is not None:
            self._queue(lease.model).requeue_front(lease.item)

    def _fail_queued(self, model: str, error: LLMOSError) -> list[Action]:
        queue = self._queues.get(model)
        if queue is None:
            return []
        failed: list[Action] = []
        for item in list(queue.queued()):
            queue.remove(item.item_id)
            failed.append(Fail(item.payload, error))
        return failed

    def _expire_unserved(self, workers: Sequence[WorkerState], now: float) -> list[Action]:
        served = {m for w in workers if w.serving for m in w.loaded}
        actions: list[Action] = []
        for model, queue in self._queues.items():
            if model in served or model in self._loading or not len(queue):
                self._unserved_since.pop(model, None)
                continue
            since = self._unserved_since.setdefault(model, now)
            limit = self.options.unserved_timeout_s
            if now - since < limit:
                continue
            error = Unavailable(f"no worker has served model {model!r} for {limit:g}s; retry later")
            actions += self._fail_queued(model, error)
            del self._unserved_since[model]
        return actions

    def _recover(self, workers: Sequence[WorkerState]) -> list[Action]:
        """Hand back the work of workers no longer alive."""
        alive = {w.worker_id for w in workers}
        actions: list[Action] = []
        for request_id, lease in list(self._leases.items()):
            if lease.worker in alive:
                continue
            if not lease.started:
                self._give_back(request_id)
                actions.append(Requeued(lease.item, lease.worker))
                continue
            self._release(request_id)
            actions.append(
                Fail(
                    lease.item.payload,
                    Unavailable(
                        f"worker {lease.worker} was lost after the answer had started "
                        "streaming; retry the request"
                    ),
                )
            )
        return actions
