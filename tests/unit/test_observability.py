"""The pure parts of observability: which GPUs a process reports, what health says as
its dependencies come and go, and that tracing costs nothing when it is off."""

from __future__ import annotations

import asyncio

import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY

from llmos import tracing
from llmos.health import ExplainedHealth, HealthMonitor
from llmos.node_metrics import visible_gpus
from llmos.priority import PriorityClass
from llmos.v1 import common_pb2, events_pb2, scheduler_pb2
from services.audit.metrics import LagAlarm
from services.scheduler import metrics as scheduler_metrics
from services.scheduler.fairshare import WorkItem

Status = health_pb2.HealthCheckResponse


def test_gpus_are_the_ones_cuda_visible_devices_gives_numbered_as_the_process_sees_them() -> None:
    assert visible_gpus(2, None) == [("0", 0), ("1", 1)]
    assert visible_gpus(4, "2,GPU-5d1e") == [("0", 2), ("1", "GPU-5d1e")]
    assert visible_gpus(4, "3,9,1") == [("0", 3)]  # CUDA stops at the first invalid entry
    assert visible_gpus(4, "") == []


class _Context:
    def __init__(self) -> None:
        self.trailers: tuple[tuple[str, str], ...] = ()

    def set_trailing_metadata(self, trailers: tuple[tuple[str, str], ...]) -> None:
        self.trailers = trailers


async def _check(servicer: ExplainedHealth) -> tuple[int, dict[str, str]]:
    context = _Context()
    reply = await servicer.Check(health_pb2.HealthCheckRequest(service=""), context)
    return reply.status, dict(context.trailers)


async def test_health_is_not_serving_with_the_reason_while_a_dependency_is_lost() -> None:
    redis_up = [True]

    async def redis() -> str:
        return "" if redis_up[0] else "lost Redis"

    async def nats() -> str:
        return ""

    monitor = HealthMonitor(ExplainedHealth())
    changes: list[str] = []

    async def changed() -> None:
        changes.append(monitor.reason)

    monitor.watch("redis", redis)
    monitor.watch("nats", nats)
    monitor.on_change(changed)
    await monitor.start(["llmos.v1.Storage"])
    assert await _check(monitor.servicer) == (Status.SERVING, {})
    redis_up[0] = False
    await monitor._publish(await monitor._problems())
    assert await _check(monitor.servicer) == (
        Status.NOT_SERVING,
        {"llmos-health-reason": "lost Redis"},
    )
    assert REGISTRY.get_sample_value("llmos_dependency_up", {"dependency": "redis"}) == 0
    assert REGISTRY.get_sample_value("llmos_healthy") == 0
    redis_up[0] = True
    await monitor._publish(await monitor._problems())
    assert await _check(monitor.servicer) == (Status.SERVING, {})
    assert REGISTRY.get_sample_value("llmos_healthy") == 1


async def test_a_check_that_hangs_or_fails_makes_the_service_not_serving() -> None:
    async def hangs() -> str:
        await asyncio.sleep(60)
        return ""

    async def fails() -> str:
        raise ConnectionResetError

    monitor = HealthMonitor(ExplainedHealth())
    monitor.watch("triton", hangs)
    monitor.watch("redis", fails)
    reason = await monitor._problems()
    assert reason == "triton does not answer; redis check failed: ConnectionResetError"


def test_tracing_off_records_nothing_and_sends_no_context() -> None:
    span = tracing.start("anything", "", attributes={tracing.WORK_ID: "w"})
    assert not span.is_recording()
    assert tracing.traceparent(span) == ""
    assert tracing.traceparent_in([("traceparent", "00-ab-cd-01"), ("x", "y")]) == "00-ab-cd-01"


def test_scheduler_gauges_count_by_class() -> None:
    def item(n: int, priority: PriorityClass) -> WorkItem:
        return WorkItem(f"r{n}", "t", priority, 1, enqueued_at=0.0)

    scheduler_metrics.observe_generations(
        [item(1, PriorityClass.HIGH)], [item(2, PriorityClass.BATCH), item(3, PriorityClass.BATCH)]
    )
    sample = REGISTRY.get_sample_value
    assert sample("llmos_requests_running", {"priority": "high"}) == 1
    assert sample("llmos_requests_waiting", {"priority": "batch"}) == 2
    assert sample("llmos_requests_waiting", {"priority": "critical"}) == 0
    job = scheduler_pb2.Job(
        spec=scheduler_pb2.JobSpec(priority=common_pb2.PRIORITY_HIGH),
        state=common_pb2.JOB_STATE_RUNNING,
    )
    scheduler_metrics.observe_jobs([job, scheduler_pb2.Job(state=common_pb2.JOB_STATE_QUEUED)])
    assert sample("llmos_jobs_running", {"priority": "high"}) == 1
    assert sample("llmos_jobs_queued", {"priority": "normal"}) == 1


@pytest.mark.parametrize("unhealthy", ["", "lost Redis"])
def test_workers_are_counted_serving_or_not(unhealthy: str) -> None:
    worker = scheduler_pb2.WorkerStatus(
        instance=common_pb2.ServiceInstance(service="trainer"), unhealthy=unhealthy
    )
    scheduler_metrics.observe_workers([worker])
    state = "not_serving" if unhealthy else "serving"
    assert REGISTRY.get_sample_value("llmos_workers", {"role": "trainer", "state": state}) == 1


async def test_one_failed_check_is_no_outage_two_in_a_row_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("llmos.health.CHECK_EVERY_S", 0.001)
    answers = iter(["", "slow", "", "lost Redis", "lost Redis", "lost Redis"])
    seen: list[str] = []
    changed_once = asyncio.Event()

    async def redis() -> str:
        return next(answers, "lost Redis")

    monitor = HealthMonitor(ExplainedHealth())
    monitor.watch("redis", redis)
    await monitor.start([])  # takes the first answer: serving

    async def changed() -> None:
        seen.append(monitor.reason)
        changed_once.set()

    monitor.on_change(changed)
    running = asyncio.create_task(monitor.run())
    await asyncio.wait_for(changed_once.wait(), 10)
    running.cancel()
    assert seen == ["lost Redis"]  # the lone "slow" changed nothing


class _Events:
    def __init__(self) -> None:
        self.sent: list[tuple[str, events_pb2.Event]] = []

    async def publish(self, subject: str, event: events_pb2.Event) -> None:
        self.sent.append((subject, event))


async def test_audit_lag_raises_one_alert_and_one_all_clear() -> None:
    events = _Events()
    alarm = LagAlarm(events, threshold_s=60)  # type: ignore[arg-type]
    for lag, pending in [(10, 5), (61, 900), (90, 1200), (40, 100), (20, 10), (75, 800)]:
        await alarm.update(lag, pending)
    said = [(subject, e.audit_lag.caught_up, e.audit_lag.lag_s) for subject, e in events.sent]
    assert said == [
        ("llmos.events.service.audit.lag", False, 61),  # behind: once, not at 90 again
        ("llmos.events.service.audit.lag", True, 20),  # under half the threshold
        ("llmos.events.service.audit.lag", False, 75),
    ]
    assert events.sent[0][1].audit_lag.pending == 900
