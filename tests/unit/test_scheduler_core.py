"""The scheduler's decision core (pure logic): priorities, fair share by tokens,
reservations, placement, and the bad input each one refuses."""

from __future__ import annotations

import pytest

from llmos.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from llmos.priority import PriorityClass
from services.scheduler.capacity import Reservation, SlotPool, next_admissible
from services.scheduler.fairshare import FairShareQueue, WorkItem
from services.scheduler.placement import WorkerView, place

P = PriorityClass


def item(n: int, tenant: str = "t", priority: P = P.NORMAL, cost: int = 100) -> WorkItem:
    return WorkItem(f"i{n}-{tenant}", tenant, priority, cost, enqueued_at=float(n))


def test_priority_classes_parse_by_name_or_number_and_refuse_unknown_ones() -> None:
    assert P.parse("critical") == P.CRITICAL
    assert P.parse("PRIORITY_BATCH") == P.BATCH
    assert P.parse(2) == P.HIGH
    assert P.parse(0) == P.NORMAL
    with pytest.raises(InvalidArgument, match="priority: unknown priority class 'urgent'"):
        P.parse("urgent")
    with pytest.raises(InvalidArgument, match="priority: unknown priority class 9"):
        P.parse(9)


def test_a_tenant_may_be_limited_to_some_classes() -> None:
    queue = FairShareQueue(10, allowed_classes={"free-tier": {P.NORMAL, P.BATCH}})
    queue.push(item(1, "free-tier", P.BATCH))
    with pytest.raises(PermissionDenied, match="may not use priority class 'critical'"):
        queue.push(item(2, "free-tier", P.CRITICAL))
    queue.push(item(3, "paying", P.CRITICAL))  # no entry: every class


def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    queue = FairShareQueue(2)
    queue.push(item(1, "a"))
    queue.push(item(2, "b"))
    with pytest.raises(ResourceExhausted, match="queue is full") as caught:
        queue.push(item(3, "c"))
    assert caught.value.retry_after_s is not None
    with pytest.raises(InvalidArgument, match="cost: must be at least 1 token"):
        FairShareQueue(5).push(item(4, cost=0))


def test_one_tenant_fills_only_its_share_and_another_is_still_admitted() -> None:
    queue = FairShareQueue(10, tenant_share=0.5)
    for n in range(5):
        queue.push(item(n, "flood"))
    with pytest.raises(ResourceExhausted, match="'flood' already has 5 requests") as caught:
        queue.push(item(5, "flood"))
    assert caught.value.retry_after_s is not None
    queue.push(item(6, "quiet"))  # the flood did not take the others' places
    assert len(queue) == 6
    served = queue.pop()  # one of the flood's is served: its place is free again
    assert served is not None and served.tenant == "flood"
    queue.push(item(7, "flood"))
    with pytest.raises(ResourceExhausted):
        queue.push(item(8, "flood"))
    queue.remove("i1-flood")  # and so is a cancelled one's
    queue.push(item(8, "flood"))
    assert FairShareQueue(1, tenant_share=0.5).tenant_limit == 1  # a tiny queue still serves


def test_higher_classes_go_first_whatever_the_arrival_order() -> None:
    queue = FairShareQueue(10)
    queue.push(item(1, "a", P.BATCH))
    queue.push(item(2, "b", P.NORMAL))
    queue.push(item(3, "c", P.CRITICAL))
    popped = [queue.pop() for _ in range(3)]
    assert [i.priority for i in popped if i] == [P.CRITICAL, P.NORMAL, P.BATCH]
    assert queue.pop() is None


def test_fair_share_is_by_tokens_not_by_requests() -> None:
    """Tenant `long` sends 10x longer requests: it gets about a tenth as many dispatched,
    so both get the same tokens."""
    queue = FairShareQueue(10_000)
    for n in range(500):
        queue.push(item(n, "long", cost=1000))
        queue.push(item(n, "short", cost=100))
    served = {"long": 0, "short": 0}
    for _ in range(440):
        popped = queue.pop()
        assert popped is not None
        served[popped.tenant] += popped.cost
    assert abs(served["long"] - served["short"]) <= 1000  # within one long request
    assert queue.served[("long", P.NORMAL)] == served["long"]


def test_weights_skew_the_share() -> None:
    queue = FairShareQueue(10_000, weights={"gold": 3.0})
    for n in range(400):
        queue.push(item(n, "gold"))
        queue.push(item(n, "std"))
    tenants = [queue.pop().tenant for _ in range(400)]  # type: ignore[union-attr]
    assert tenants.count("gold") == pytest.approx(300, abs=2)


def test_an_idle_tenant_gets_no_credit_for_the_time_away() -> None:
    queue = FairShareQueue(10_000)
    for n in range(100):
        queue.push(item(n, "busy"))
    for _ in range(50):
        queue.pop()
    for n in range(100):
        queue.push(item(n, "returning"))
        queue.push(item(n + 100, "busy"))
    first_twenty = [queue.pop().tenant for _ in range(20)]  # type: ignore[union-attr]
    assert first_twenty.count("returning") <= 11  # alternates; no burst of catch-up


def test_settling_the_true_cost_moves_the_tenants_clock() -> None:
    queue = FairShareQueue(100)
    for n in range(10):
        queue.push(item(n, "a"))
        queue.push(item(n, "b"))
    first = queue.pop()
    assert first is not None
    queue.settle(first.tenant, P.NORMAL, estimated=100, actual=1000)  # it ran much longer
    following = [queue.pop().tenant for _ in range(5)]  # type: ignore[union-attr]
    assert following.count(first.tenant) <= 1


def test_cancelled_items_leave_the_queue() -> None:
    queue = FairShareQueue(10)
    queue.push(item(1, "a"))
    queue.push(item(2, "a"))
    assert queue.remove("i1-a") is not None
    assert queue.remove("i1-a") is None
    assert len(queue) == 1 and "i2-a" in queue


def test_a_guaranteed_reservation_is_kept_for_its_class() -> None:
    queue = FairShareQueue(100)
    pool = SlotPool(4, [Reservation(2, priority=P.HIGH)])
    for n in range(5):
        queue.push(item(n, "bulk", P.BATCH))
    admitted = [next_admissible(queue, pool) for _ in range(3)]
    assert [a is not None for a in admitted] == [True, True, False]  # 2 slots held back
    queue.push(item(9, "ops", P.CRITICAL))  # CRITICAL is above HIGH: covered
    assert next_admissible(queue, pool) is not None
    assert next_admissible(queue, pool) is None  # one reserved slot still kept


def test_a_tenant_reservation_and_headroom() -> None:
    pool = SlotPool(10, [Reservation(3, tenant="acme")])
    for _ in range(7):
        assert pool.can_admit("other", P.NORMAL)
        pool.acquire("other", P.NORMAL)
    assert not pool.can_admit("other", P.NORMAL)
    assert pool.can_admit("acme", P.BATCH)
    headroom = SlotPool(10, [Reservation(2, priority=P.CRITICAL, headroom=True)])
    for _ in range(8):
        headroom.acquire("ops", P.CRITICAL)  # critical using plenty does not use it up
    assert not headroom.can_admit("bulk", P.BATCH)
    assert headroom.can_admit("ops", P.CRITICAL)


def test_placement_takes_the_least_loaded_worker_that_has_the_model() -> None:
    warm_busy = WorkerView("warm-busy", 4, busy=3, models={"m"})
    warm_idle = WorkerView("warm-idle", 4, busy=1, models={"m"})
    cold_idle = WorkerView("cold-idle", 4, busy=0)
    assert place([warm_busy, cold_idle, warm_idle], "m") is warm_idle
    assert place([warm_busy, cold_idle, warm_idle], "other-model") is None  # nobody has it
    full = WorkerView("full", 2, busy=2, models={"m"})
    assert place([full], "m") is None


def test_a_worker_that_misses_three_heartbeats_is_declared_dead() -> None:
    from llmos.v1 import common_pb2, scheduler_pb2
    from llmos.workers import WorkerTable

    def heartbeat(name: str) -> scheduler_pb2.WorkerStatus:
        return scheduler_pb2.WorkerStatus(
            instance=common_pb2.ServiceInstance(service="trainer", instance_id=name),
            heartbeat_interval_s=1.0,
        )

    table = WorkerTable()
    for name in ("steady", "flaky"):
        table.observe(heartbeat(name), now=100.0)
    table.observe(heartbeat("steady"), now=102.0)
    assert [w.instance.instance_id for w in table.alive(now=102.0)] == ["flaky", "steady"]
    # flaky: 3.5 s (> 3 intervals) without a heartbeat; steady: 1.5 s
    assert [w.instance.instance_id for w in table.alive(now=103.5)] == ["steady"]
    assert table.alive(now=103.5, service="inference-worker") == []


def test_a_requeued_item_goes_first_and_costs_nothing() -> None:
    queue = FairShareQueue(10)
    queue.push(item(1, "a"))
    queue.push(item(2, "a"))
    queue.push(item(3, "b"))
    first = queue.pop()
    assert first is not None and first.item_id == "i1-a"
    queue.requeue_front(first)
    assert queue.served[("a", P.NORMAL)] == 0
    assert queue.pop() is first
