"""The scheduler's generation rules (pure): what each event makes it do — queue, send,
load a model, hand back, fail with a sentence — with no NATS, Redis or clock."""

from __future__ import annotations

import pytest

from llmos.errors import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from llmos.priority import PriorityClass
from services.scheduler.fairshare import WorkItem
from services.scheduler.generations import (
    Action,
    Deployment,
    Fail,
    GenerationBoard,
    Load,
    ModelSource,
    Requeued,
    Send,
    Submitted,
    WorkerState,
)
from services.scheduler.options import SchedulerOptions

P = PriorityClass


def worker(
    name: str,
    slots: int = 2,
    free: int | None = None,
    loaded: tuple[str, ...] = ("m",),
    available: tuple[str, ...] = (),
) -> WorkerState:
    return WorkerState(
        name, slots, slots if free is None else free, frozenset(loaded), frozenset(available)
    )


def item(n: int, tenant: str = "t", priority: P = P.NORMAL) -> WorkItem:
    return WorkItem(f"r{n}", tenant, priority, 10, enqueued_at=0.0, payload=f"work-{n}")


def board(**options: object) -> GenerationBoard:
    return GenerationBoard(SchedulerOptions(**options), started_at=0.0)  # type: ignore[arg-type]


def sends(actions: Submitted | list[Action]) -> list[tuple[str, str]]:
    done = actions.actions if isinstance(actions, Submitted) else actions
    return [(a.item.item_id, a.worker) for a in done if isinstance(a, Send)]


def test_a_generation_goes_to_the_least_loaded_worker_that_has_its_model() -> None:
    rules = board()
    busy, idle, other = worker("busy", free=1), worker("idle"), worker("other", loaded=("x",))
    submitted = rules.submit(item(1), "m", [busy, idle, other], now=20.0)
    assert sends(submitted) == [("r1", "idle")]
    assert rules.lease("r1") is not None and rules.queued("m") == 0
    assert submitted.queued == 1  # counted before it left the queue: "this one included"


def test_work_waits_when_every_slot_is_taken_and_goes_when_one_frees() -> None:
    rules = board()
    only = [worker("w", slots=1)]
    assert sends(rules.submit(item(1), "m", only, now=20.0)) == [("r1", "w")]
    assert sends(rules.submit(item(2), "m", only, now=20.0)) == []
    assert rules.queued("m") == 1
    assert rules.progress("r1", "w", only, started=True) == []
    after = rules.progress("r1", "w", only, finished=True, tokens=30)
    assert sends(after) == [("r2", "w")]


def test_progress_from_a_worker_that_does_not_hold_the_lease_is_ignored() -> None:
    rules = board()
    workers = [worker("a", slots=1), worker("b", slots=1)]
    rules.submit(item(1), "m", workers, now=20.0)
    holder = rules.lease("r1")
    assert holder is not None
    stranger = "b" if holder.worker == "a" else "a"
    assert rules.progress("r1", stranger, workers, finished=True) == []
    assert rules.lease("r1") is holder


def test_a_resubmission_of_queued_or_leased_work_is_a_no_op() -> None:
    rules = board()
    only = [worker("w", slots=1)]
    rules.submit(item(1), "m", only, now=20.0)
    rules.submit(item(2), "m", only, now=20.0)
    assert rules.submit(item(1), "m", only, now=20.0).actions == []  # leased already
    assert rules.submit(item(2), "m", only, now=20.0).actions == []  # queued already
    assert rules.queued("m") == 1


def test_a_tenant_limited_to_some_classes_is_refused_others() -> None:
    rules = board(tenant_classes={"free": {P.BATCH}})
    with pytest.raises(PermissionDenied, match="may not use priority class 'critical'"):
        rules.submit(item(1, "free", P.CRITICAL), "m", [worker("w")], now=20.0)


def test_a_full_queue_refuses_with_retry_after() -> None:
    rules = board(queue_capacity=1)
    none_free = [worker("w", free=0)]
    rules.submit(item(1), "m", none_free, now=20.0)
    with pytest.raises(ResourceExhausted) as caught:
        rules.submit(item(2), "m", none_free, now=20.0)
    assert caught.value.retry_after_s is not None


def test_a_model_nobody_has_is_refused_after_the_warm_up_but_queued_during_it() -> None:
    rules = board(worker_warmup_s=10.0)
    assert rules.submit(item(1), "ghost", [worker("w")], now=5.0).actions == []  # unheard yet
    assert rules.queued("ghost") == 1
    with pytest.raises(NotFound, match="model 'ghost' is not available on any worker"):
        rules.submit(item(2), "ghost", [worker("w")], now=11.0)


def test_work_for_a_model_nobody_serves_fails_after_the_timeout() -> None:
    rules = board(worker_warmup_s=60.0, unserved_timeout_s=30.0)
    rules.submit(item(1), "ghost", [], now=1.0)
    assert rules.tick([], now=2.0) == []  # first sight: the clock starts
    assert rules.tick([], now=31.0) == []
    (fail,) = rules.tick([], now=32.5)
    assert isinstance(fail, Fail) and fail.payload == "work-1"
    assert "no worker has served model 'ghost' for 30s" in str(fail.error)
    assert rules.queued() == 0


def test_a_model_one_worker_can_load_is_loaded_there_once_and_the_work_waits() -> None:
    rules = board()
    workers = [
        worker("busy", slots=4, free=1, loaded=("m",), available=("spare",)),
        worker("idle", slots=4, loaded=("m",), available=("spare",)),
        worker("without", slots=4, loaded=("m",)),
    ]
    assert rules.submit(item(1), "spare", workers, now=20.0).actions == [Load("spare", "idle")]
    assert rules.submit(item(2), "spare", workers, now=20.0).actions == []  # one at a time
    assert rules.queued("spare") == 2
    assert rules.loaded("spare", None) == []
    now_loaded = [*workers[:1], worker("idle", slots=4, loaded=("m", "spare")), workers[2]]
    assert sends(rules.tick(now_loaded, now=21.0)) == [("r1", "idle"), ("r2", "idle")]


def test_a_failed_load_fails_the_work_that_waited_for_it() -> None:
    rules = board()
    rules.submit(item(1), "spare", [worker("w", available=("spare",))], now=20.0)
    (failed,) = rules.loaded("spare", FailedPrecondition("the files are damaged"))
    assert isinstance(failed, Fail)
    assert (failed.payload, str(failed.error)) == ("work-1", "the files are damaged")
    # the model is no longer being loaded: the next generation asks for a load again
    again = rules.submit(item(2), "spare", [worker("w", available=("spare",))], now=21.0)
    assert again.actions == [Load("spare", "w")]


def test_a_load_is_asked_for_only_once_the_work_is_queued() -> None:
    """A full queue refuses the generation: no load is started for work that was refused,
    and the next generation that gets in asks for it."""
    rules = board(queue_capacity=1, worker_warmup_s=10.0)
    rules.submit(item(1), "spare", [], now=1.0)  # queued during the warm-up, no worker yet
    loadable = [worker("w", available=("spare",))]
    with pytest.raises(ResourceExhausted):
        rules.submit(item(2), "spare", loadable, now=20.0)
    rules.cancel("r1")
    assert rules.submit(item(3), "spare", loadable, now=21.0).actions == [Load("spare", "w")]


def test_a_deployment_goes_to_the_least_loaded_worker_unless_one_serves_it() -> None:
    rules = board(worker_warmup_s=10.0)
    source = ModelSource("acme", "tune", 3)
    workers = [worker("full", free=0), worker("free", loaded=("m", "x"))]
    with pytest.raises(Unavailable, match="not heard from every worker yet"):
        rules.deploy("acme--tune-v3", source, workers, now=5.0)  # one may serve it already
    deployed = rules.deploy("acme--tune-v3", source, workers, now=20.0)
    assert deployed == Deployment("free", Load("acme--tune-v3", "free", source))
    with pytest.raises(Unavailable, match="being loaded already"):
        rules.deploy("acme--tune-v3", source, workers, now=21.0)
    assert rules.loaded("acme--tune-v3", None) == []
    serving = [worker("other", loaded=("acme--tune-v3",))]
    assert rules.deploy("acme--tune-v3", source, serving, now=22.0) == Deployment("other", None)
    with pytest.raises(Unavailable, match="no inference worker is running"):
        rules.deploy("acme--tune-v4", source, [], now=23.0)


def test_a_worker_lost_before_streaming_gives_its_work_to_another() -> None:
    rules = board()
    both = [worker("doomed", slots=1), worker("spare", slots=1, free=0)]
    rules.submit(item(1), "m", both, now=20.0)
    lease = rules.lease("r1")
    assert lease is not None and lease.worker == "doomed"
    actions = rules.tick([worker("spare", slots=1)], now=21.0)
    assert [a.worker for a in actions if isinstance(a, Requeued)] == ["doomed"]
    assert sends(actions) == [("r1", "spare")]


def test_a_worker_that_is_not_serving_keeps_its_work_but_gets_none_new() -> None:
    rules = board()
    healthy = worker("w", slots=2)
    sick = WorkerState("w", 2, 2, frozenset({"m"}), frozenset(), serving=False)
    rules.submit(item(1), "m", [healthy], now=20.0)
    submitted = rules.submit(item(2), "m", [sick], now=21.0)
    assert sends(submitted) == [] and rules.queued("m") == 1
    assert rules.tick([sick], now=22.0) == []  # alive: its lease holds, nothing moves
    assert rules.lease("r1") is not None
    assert sends(rules.tick([healthy], now=23.0)) == [("r2", "w")]  # serving again


def test_work_for_a_model_only_unhealthy_workers_have_waits_then_times_out() -> None:
    rules = board(unserved_timeout_s=30.0)
    sick = WorkerState("w", 2, 2, frozenset({"m"}), frozenset({"m"}), serving=False)
    submitted = rules.submit(item(1), "m", [sick], now=20.0)
    assert submitted.actions == [] and rules.queued("m") == 1  # no NOT_FOUND, no load
    assert rules.tick([sick], now=21.0) == []
    expired = [a for a in rules.tick([sick], now=52.0) if isinstance(a, Fail)]
    assert [type(a.error) for a in expired] == [Unavailable]


def test_a_worker_lost_mid_stream_ends_the_answer_with_unavailable() -> None:
    rules = board()
    rules.submit(item(1), "m", [worker("doomed")], now=20.0)
    rules.progress("r1", "doomed", [worker("doomed")], started=True)
    (fail,) = rules.tick([worker("spare")], now=21.0)
    assert isinstance(fail, Fail) and fail.payload == "work-1"
    assert "lost after the answer had started streaming" in str(fail.error)
    assert rules.lease("r1") is None


def test_a_worker_that_does_not_answer_or_is_full_gets_the_work_back_in_the_queue() -> None:
    rules = board()
    only = [worker("w", slots=1)]
    rules.submit(item(1), "m", only, now=20.0)
    assert rules.not_taken("r1", "w", None) == []
    assert rules.queued("m") == 1 and rules.lease("r1") is None
    assert sends(rules.tick(only, now=20.5)) == [("r1", "w")]
    assert rules.not_taken("r1", "w", ResourceExhausted("full")) == []
    assert rules.queued("m") == 1


def test_a_worker_that_refuses_the_work_for_good_ends_it_with_its_reason() -> None:
    rules = board()
    rules.submit(item(1), "m", [worker("w")], now=20.0)
    (fail,) = rules.not_taken("r1", "w", NotFound("model 'm' is not loaded on worker w"))
    assert isinstance(fail, Fail) and "not loaded on worker w" in str(fail.error)
    assert rules.queued() == 0 and rules.lease("r1") is None


def test_cancelled_work_leaves_the_queue() -> None:
    rules = board()
    rules.submit(item(1), "m", [worker("w", free=0)], now=20.0)
    rules.cancel("r1")
    assert rules.queued() == 0
    assert sends(rules.tick([worker("w")], now=21.0)) == []


def test_critical_headroom_keeps_a_slot_free_for_critical_work() -> None:
    rules = board(critical_headroom=1)
    two = [worker("w", slots=2)]
    assert sends(rules.submit(item(1, "bulk", P.BATCH), "m", two, now=20.0)) == [("r1", "w")]
    assert sends(rules.submit(item(2, "bulk", P.BATCH), "m", two, now=20.0)) == []
    assert sends(rules.submit(item(3, "ops", P.CRITICAL), "m", two, now=20.0)) == [("r3", "w")]


def test_tokens_served_are_counted_per_tenant() -> None:
    rules = board()
    workers = [worker("w", slots=4)]
    rules.submit(item(1, "a"), "m", workers, now=20.0)
    rules.submit(item(2, "b"), "m", workers, now=20.0)
    assert rules.served_tokens() == {"a": 10, "b": 10}
