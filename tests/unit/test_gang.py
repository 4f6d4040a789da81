"""Placing training jobs (pure logic): whole gangs or nothing, fewest trainers, reservations,
and the fewest lower-priority jobs to preempt."""

from __future__ import annotations

from llmos.priority import PriorityClass
from llmos.v1 import common_pb2
from services.scheduler.capacity import Reservation
from services.scheduler.gang import GangRequest, Holding, TrainerPool, victims_for

P = PriorityClass
GIB = 1 << 30


def trainer(
    processes: int = 2, cpu: int = 2000, memory: int = 8 * GIB, gpus: int = 0
) -> common_pb2.Resources:
    return common_pb2.Resources(
        processes=processes, cpu_millicores=cpu, memory_bytes=memory, gpus=gpus
    )


def job(
    job_id: str,
    processes: int = 1,
    priority: P = P.NORMAL,
    tenant: str = "lab",
    cpu: int = 1000,
    memory: int = GIB,
    gpus: int = 0,
) -> GangRequest:
    per_process = common_pb2.Resources(cpu_millicores=cpu, memory_bytes=memory, gpus=gpus)
    return GangRequest(job_id, tenant, priority, per_process, processes)


def test_a_gang_goes_on_one_trainer_when_one_can_take_it_all() -> None:
    pool = TrainerPool({"a": trainer(4, 4000), "b": trainer(2, 2000)}, [])
    assert pool.place(job("j", processes=2)) == (("b", 2),)  # best fit keeps "a" whole
    assert pool.place(job("k", processes=4)) == (("a", 4),)


def test_a_gang_spreads_over_trainers_only_when_it_must_and_never_half_places() -> None:
    pool = TrainerPool({"a": trainer(), "b": trainer()}, [])
    assert pool.place(job("j", processes=3)) == (("a", 2), ("b", 1))
    before = {t: dict(f) for t, f in pool.free.items()}
    assert pool.place(job("k", processes=2)) is None  # one slot left: nothing is taken
    assert pool.free == before
    assert pool.place(job("l", processes=1)) == (("b", 1),)


def test_every_resource_counts_not_just_slots() -> None:
    pool = TrainerPool(
        {"a": trainer(4, 4000, memory=3 * GIB), "g": trainer(4, 4000, memory=4 * GIB, gpus=1)}, []
    )
    assert pool.place(job("big", processes=2, memory=2 * GIB)) == (("g", 2),)
    assert pool.place(job("gpu", gpus=1)) is None  # the GPU trainer has no memory left
    assert pool.place(job("small", memory=GIB)) == (("a", 1),)


def test_holdings_of_running_jobs_are_not_free_and_gone_trainers_are_ignored() -> None:
    held = [Holding(job("r", processes=2), (("a", 2),)), Holding(job("x"), (("gone", 1),))]
    pool = TrainerPool({"a": trainer(), "b": trainer()}, held)
    assert pool.free["a"]["processes"] == 0
    assert pool.place(job("j", processes=3)) is None
    assert pool.place(job("k", processes=2)) == (("b", 2),)


def test_a_guaranteed_reservation_holds_back_its_unused_slots_from_others() -> None:
    reserved = [Reservation(2, tenant="vip")]
    pool = TrainerPool({"a": trainer(), "b": trainer()}, [], reserved)
    assert pool.place(job("o1", tenant="other")) is not None
    assert pool.place(job("o2", tenant="other")) is not None
    assert pool.place(job("o3", tenant="other")) is None  # 2 slots free, both reserved
    assert pool.place(job("v", tenant="vip", processes=2)) is not None


def test_a_class_reservation_covers_higher_classes_too() -> None:
    reserved = [Reservation(1, priority=P.HIGH)]
    pool = TrainerPool({"a": trainer()}, [], reserved)
    assert pool.place(job("n", priority=P.NORMAL)) is not None
    assert pool.place(job("n2", priority=P.NORMAL)) is None
    assert pool.place(job("c", priority=P.CRITICAL)) is not None


def test_preemption_takes_the_fewest_lowest_and_newest_jobs() -> None:
    trainers = {"a": trainer(), "b": trainer()}
    running = [
        Holding(job("batch-old", priority=P.BATCH), (("a", 1),), started=1.0),
        Holding(job("batch-new", priority=P.BATCH), (("a", 1),), started=2.0),
        Holding(job("normal", priority=P.NORMAL), (("b", 1),), started=3.0),
        Holding(job("high", priority=P.HIGH), (("b", 1),), started=4.0),
    ]
    everyone = {h.request.job_id for h in running}
    chosen = victims_for(job("urgent", priority=P.HIGH), trainers, running, everyone)
    assert [v.request.job_id for v in chosen or []] == ["batch-new"]
    chosen = victims_for(job("pair", processes=2, priority=P.HIGH), trainers, running, everyone)
    assert [v.request.job_id for v in chosen or []] == ["batch-new", "batch-old"]


def test_jobs_already_leaving_are_waited_for_not_joined_by_new_victims() -> None:
    trainers = {"a": trainer()}
    leaving = Holding(job("going", priority=P.BATCH), (("a", 1),), started=1.0)
    staying = Holding(job("newer", priority=P.BATCH), (("a", 1),), started=2.0)
    urgent = job("urgent", priority=P.HIGH)
    chosen = victims_for(urgent, trainers, [leaving, staying], {"going", "newer"})
    assert [v.request.job_id for v in chosen or []] == ["newer"]
    # once "going" was told to stop it is left out: the request fits -> wait, pick no one
    assert victims_for(urgent, trainers, [staying], {"newer"}) == []


def test_a_pick_made_unnecessary_by_a_later_one_is_dropped() -> None:
    trainers = {"a": trainer(), "b": trainer()}
    running = [
        Holding(job("small", priority=P.BATCH), (("a", 1),), started=9.0),  # newest
        Holding(job("wide", processes=2, priority=P.BATCH), (("b", 2),), started=1.0),
        Holding(job("normal"), (("a", 1),), started=5.0),
    ]
    ids = {h.request.job_id for h in running}
    chosen = victims_for(job("pair", processes=2, priority=P.HIGH), trainers, running, ids)
    assert [v.request.job_id for v in chosen or []] == ["wide"]


def test_no_preemption_of_equal_or_higher_classes_or_when_it_would_not_help() -> None:
    trainers = {"a": trainer()}
    running = [Holding(job("n1"), (("a", 1),)), Holding(job("n2"), (("a", 1),))]
    assert victims_for(job("peer"), trainers, running, {"n1", "n2"}) is None
    mixed = [
        Holding(job("b", priority=P.BATCH), (("a", 1),)),
        Holding(job("h", priority=P.HIGH), (("a", 1),)),
    ]
    big = job("big", processes=2, priority=P.HIGH)
    assert victims_for(big, trainers, mixed, {"b", "h"}) is None
