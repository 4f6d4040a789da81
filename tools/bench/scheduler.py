"""`make bench-scheduler`: the scheduler's decision core under simulated load.

Runs the real queue, admission and placement code (`services.scheduler`) against a
discrete-event simulation of a cluster: 50 workers, each with a number of slots that
process model tokens at a fixed rate. Simulated time, so the numbers do not depend on
this machine's noise — except `decisions_per_s`, which is wall-clock speed of the
decision code itself. Prints one JSON line:

  decisions_per_s          pop + admission + placement, 1,000 jobs queued, 50 workers
  gang_decisions_per_s     training-job placement tries (whole gangs, reservations),
                           1,000 jobs queued, 50 trainers
  jain_equal               Jain's index of tokens served, 4 equal tenants, equal requests
  jain_skewed              the same when one tenant sends 10x the requests, each 10x longer
                           (and, for contrast, what plain FIFO order would give)
  critical_p99_wait_ratio  p99 queue wait of `critical` requests while `batch` work
                           saturates the cluster / the same with no batch work
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from llmos.priority import PriorityClass
from llmos.v1 import common_pb2
from services.scheduler.capacity import Reservation, SlotPool, next_admissible
from services.scheduler.fairshare import FairShareQueue, WorkItem
from services.scheduler.gang import GangRequest, Holding, TrainerPool
from services.scheduler.placement import WorkerView, place

WORKERS = 50
SLOTS_PER_WORKER = 4
TOKENS_PER_S_PER_SLOT = 50.0
MODEL = "smollm2-135m-instruct"
#: slots kept free for `critical` work in the priority scenario (10% of the cluster)
HEADROOM = 20


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one gets everything."""
    total = sum(values)
    return total * total / (len(values) * sum(v * v for v in values)) if total else 0.0


@dataclass
class Cluster:
    """Simulated workers plus the real scheduling core."""

    reservations: list[Reservation] = field(default_factory=list)
    #: FIFO baseline: every request in one lane (the real tenant rides in the payload)
    fifo: bool = False
    now: float = 0.0
    #: how many workers it simulates
    size: int = WORKERS

    def __post_init__(self) -> None:
        self.queue = FairShareQueue(capacity=1_000_000)
        self.pool = SlotPool(self.size * SLOTS_PER_WORKER, self.reservations)
        self.workers = [
            WorkerView(f"w{i}", SLOTS_PER_WORKER, models={MODEL}) for i in range(self.size)
        ]
        self._events: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._ids = itertools.count()
        self.served: defaultdict[str, float] = defaultdict(float)
        self.waits: defaultdict[PriorityClass, list[float]] = defaultdict(list)
        self.on_done: Any = None

    def submit(self, tenant: str, priority: PriorityClass, cost: int) -> None:
        lane = "everyone" if self.fifo else tenant
        item = WorkItem(f"r{next(self._ids)}", lane, priority, cost, self.now, payload=tenant)
        self.queue.push(item)

    def at(self, when: float, kind: str, payload: Any = None) -> None:
        heapq.heappush(self._events, (when, next(self._seq), kind, payload))

    def _dispatch(self, measure_from: float) -> None:
        while True:
            item = next_admissible(self.queue, self.pool)
            if item is None:
                return
            worker = place(self.workers, MODEL)
            assert worker is not None  # the pool admitted it, so a slot is free
            worker.busy += 1
            if self.now >= measure_from:
                self.waits[item.priority].append(self.now - item.enqueued_at)
            self.at(self.now + item.cost / TOKENS_PER_S_PER_SLOT, "done", (item, worker))

    def run(self, until: float, measure_from: float) -> None:
        self._dispatch(measure_from)
        while self._events and self._events[0][0] <= until:
            self.now, _, kind, payload = heapq.heappop(self._events)
            if kind == "done":
                item, worker = payload
                worker.busy -= 1
                self.pool.release(item.tenant, item.priority)
                if self.now >= measure_from:
                    self.served[item.payload] += item.cost
                if self.on_done:
                    self.on_done(item)
            else:  # "arrive": an open-loop arrival
                payload()
            self._dispatch(measure_from)


def closed_loop(
    cluster: Cluster, tenants: dict[str, tuple[int, int]], klass: PriorityClass
) -> None:
    """Each tenant keeps `outstanding` requests of `cost` tokens in the system."""

    def refill(item: WorkItem) -> None:
        if item.payload in tenants and item.priority == klass:
            cluster.submit(item.payload, klass, tenants[item.payload][1])

    previous = cluster.on_done

    def on_done(item: WorkItem) -> None:
        if previous:
            previous(item)
        refill(item)

    cluster.on_done = on_done
    for tenant, (outstanding, cost) in tenants.items():
        for _ in range(outstanding):
            cluster.submit(tenant, klass, cost)


def fairness(skewed: bool, fifo: bool = False, seconds: float = 3000.0) -> float:
    cluster = Cluster(fifo=fifo)
    base = 200
    tenants = {t: (100, base) for t in ("a", "b", "c", "d")}
    if skewed:
        tenants["a"] = (1000, 10 * base)
    closed_loop(cluster, tenants, PriorityClass.NORMAL)
    cluster.run(until=seconds, measure_from=seconds * 0.2)
    return jain([cluster.served[t] for t in tenants])


def critical_wait(with_batch: bool, seconds: float, seed: int) -> list[float]:
    """Critical requests arrive (Poisson) at 90% of the cluster's capacity; optionally
    batch work saturates whatever is left. Other classes must leave HEADROOM slots free."""
    cluster = Cluster(
        reservations=[Reservation(HEADROOM, priority=PriorityClass.CRITICAL, headroom=True)]
    )
    rng = random.Random(seed)
    cost = 200
    capacity_per_s = WORKERS * SLOTS_PER_WORKER * TOKENS_PER_S_PER_SLOT / cost
    rate = 0.9 * capacity_per_s
    moment = 0.0
    while moment < seconds:
        moment += rng.expovariate(rate)
        cluster.at(moment, "arrive", lambda: cluster.submit("ops", PriorityClass.CRITICAL, cost))
    if with_batch:
        closed_loop(cluster, {"bulk": (1000, cost)}, PriorityClass.BATCH)
    cluster.run(until=seconds, measure_from=seconds * 0.1)
    return cluster.waits[PriorityClass.CRITICAL]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def decisions_per_s(decisions: int = 20_000) -> float:
    """Wall-clock speed of one decision with 1,000 jobs queued over 4 classes and 8
    tenants and 50 workers: pop the fair choice, admit it, place it, free the slot."""
    rng = random.Random(1)
    queue = FairShareQueue(capacity=10_000)
    pool = SlotPool(WORKERS, [Reservation(5, priority=PriorityClass.HIGH)])
    workers = [WorkerView(f"w{i}", 1, models={MODEL} if i % 2 else set()) for i in range(WORKERS)]
    ids = itertools.count()

    def push() -> None:
        queue.push(
            WorkItem(
                f"j{next(ids)}",
                f"t{rng.randrange(8)}",
                rng.choice(list(PriorityClass)),
                rng.randrange(50, 2000),
                0.0,
            )
        )

    for _ in range(1000):
        push()
    started = time.perf_counter()
    for _ in range(decisions):
        item = next_admissible(queue, pool)
        assert item is not None
        assert place(workers, MODEL) is not None
        pool.release(item.tenant, item.priority)
        push()
    return decisions / (time.perf_counter() - started)


def gang_decisions_per_s(rounds: int = 5) -> float:
    """Wall-clock speed of the training dispatcher's placement: 1,000 queued jobs of 1 to
    4 processes over 50 trainers of 8 slots, half of them full, with a reservation; each
    round rebuilds the pool from the holdings (as a tick does) and tries every job."""
    rng = random.Random(2)
    trainers = {
        f"t{i}": common_pb2.Resources(
            processes=8, cpu_millicores=8000, memory_bytes=64 << 30, gpus=i % 2
        )
        for i in range(WORKERS)
    }
    holdings = [Holding(gang_request(f"r{i}", rng), ((f"t{i % WORKERS}", 1),)) for i in range(200)]
    queued = [gang_request(f"q{i}", rng) for i in range(1000)]
    reservations = [Reservation(8, tenant="t0")]
    started = time.perf_counter()
    for _ in range(rounds):
        pool = TrainerPool(trainers, holdings, reservations)
        for request in queued:
            pool.place(request)
    return rounds * len(queued) / (time.perf_counter() - started)


def gang_request(job_id: str, rng: random.Random) -> GangRequest:
    per_process = common_pb2.Resources(
        cpu_millicores=1000, memory_bytes=rng.choice((2, 4, 8)) << 30, gpus=rng.randrange(2)
    )
    return GangRequest(
        job_id, f"t{rng.randrange(8)}", rng.choice(list(PriorityClass)), per_process,
        rng.randrange(1, 5),
    )  # fmt: skip


def measure(seconds: float) -> dict[str, Any]:
    without = critical_wait(False, seconds, seed=7)
    with_batch = critical_wait(True, seconds, seed=7)
    p99_without, p99_with = p99(without), p99(with_batch)
    return {
        "bench": "scheduler",
        "decisions_per_s": round(decisions_per_s()),
        "gang_decisions_per_s": round(gang_decisions_per_s()),
        "jain_equal": round(fairness(skewed=False), 4),
        "jain_skewed": round(fairness(skewed=True), 4),
        "jain_skewed_fifo_baseline": round(fairness(skewed=True, fifo=True), 4),
        "critical_p99_wait_s": {"no_batch": round(p99_without, 4), "batch": round(p99_with, 4)},
        "critical_p99_wait_ratio": round(p99_with / p99_without, 3) if p99_without else None,
        "cluster": f"{WORKERS} workers x {SLOTS_PER_WORKER} slots x "
        f"{TOKENS_PER_S_PER_SLOT:g} tokens/s (simulated)",
        "critical_load": f"Poisson, 90% of capacity; {HEADROOM} slots kept free for critical",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="simulated seconds")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
