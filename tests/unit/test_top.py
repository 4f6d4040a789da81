"""`llmos top` without servers: what a frame shows of polls and alerts, which events and
changes raise alerts, and the scheduler's queue entries it reads (per class and tenant,
other tenants' summed)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console, RenderableType

from llmos.cli import top
from llmos.cli.main import main
from llmos.cli.output import PIPE_WIDTH
from llmos.cli.top import Alert, alert_of, frame, problems, workers_lost
from llmos.cluster_view import Poll
from llmos.v1 import common_pb2, events_pb2, gateway_pb2, scheduler_pb2
from services.scheduler.cluster_view import cluster_seen_by, queues_of

GiB = 2**30
NORMAL, BATCH = common_pb2.PRIORITY_NORMAL, common_pb2.PRIORITY_BATCH


def _text(renderable: RenderableType) -> str:
    out = io.StringIO()
    Console(file=out, width=PIPE_WIDTH, no_color=True, highlight=False).print(renderable)
    return out.getvalue()


def _row(text: str, first_cell: str) -> list[str]:
    """The cells of the line that starts with `first_cell`."""
    for line in text.splitlines():
        if line.split() and line.split()[0] == first_cell:
            return line.split()
    raise AssertionError(f"no row for {first_cell!r} in:\n{text}")


def _cluster(tokens: int = 1000) -> scheduler_pb2.ClusterStatus:
    cluster = scheduler_pb2.ClusterStatus(
        queued_requests=3, queued_jobs=1, tokens_served_by_tenant={"acme": tokens}
    )
    worker = cluster.workers.add(slots=4, free_slots=1, loaded_models=["smollm2"])
    worker.instance.service, worker.instance.instance_id = "inference-worker", "iw-1-ab"
    worker.capacity.cpu_millicores, worker.capacity.memory_bytes = 2000, 8 * GiB
    worker.capacity.gpus, worker.capacity.gpu_memory_bytes = 1, 80 * GiB
    worker.in_use.cpu_millicores, worker.in_use.memory_bytes = 1500, 2 * GiB
    worker.in_use.gpus, worker.in_use.gpu_memory_bytes = 1, 20 * GiB
    trainer = cluster.workers.add(slots=2, free_slots=1, running_jobs=["job-7@1"])
    trainer.instance.service, trainer.instance.instance_id = "trainer", "trainer-1-cd"
    cluster.queues.add(priority=NORMAL, tenant="acme", generations=3)
    cluster.queues.add(priority=BATCH, tenant="acme", jobs=1)
    return cluster


def _job() -> scheduler_pb2.Job:
    job = scheduler_pb2.Job(job_id="job-7", state=common_pb2.JOB_STATE_RUNNING)
    job.spec.name = "tiny"
    job.progress.MergeFrom(
        common_pb2.TrainingProgress(step=40, total_steps=100, loss=2.5, tokens_per_s=900, eta_s=75)
    )
    job.placement.add(instance_id="trainer-1-cd", processes=1)
    return job


def _poll(at: float = 1000.0, tokens: int = 1000, **fields: object) -> Poll:
    return Poll(at, _cluster(tokens), [_job()], **fields)  # type: ignore[arg-type]


def test_a_frame_shows_each_worker_with_its_use_busy_slots_models_and_jobs() -> None:
    text = _text(frame(_poll(), None, []))
    assert _row(text, "iw-1-ab") == [
        "iw-1-ab", "1.50/2", "2.00/8.0", "1/1", "20.0/80", "GiB", "3/4", "-", "smollm2", "-",
    ]  # fmt: skip
    assert _row(text, "trainer-1-cd")[-4:] == ["1/2", "-", "-", "job-7@1"]
    assert "2 workers" in text and "3 generations and 1 jobs queued" in text


def test_a_frame_shows_a_running_job_with_step_loss_throughput_eta_and_place() -> None:
    text = _text(frame(_poll(), None, []))
    assert _row(text, "job-7") == [
        "job-7", "tiny", "40/100", "2.5000", "-", "900", "1m15s", "trainer-1-cd",
    ]  # fmt: skip


def test_queues_are_shown_by_class_and_tenant() -> None:
    text = _text(frame(_poll(), None, []))
    assert _row(text, "normal") == ["normal", "acme", "3", "0"]
    assert _row(text, "batch") == ["batch", "acme", "0", "1"]


def test_tokens_per_second_needs_two_polls_and_is_their_difference_over_time() -> None:
    once = _text(frame(_poll(), None, []))
    assert _row(once, "acme") == ["acme", "1000", "-"]
    assert "- tokens/s" in once
    later = _text(frame(_poll(at=1002.0, tokens=1500), _poll(), []))
    assert _row(later, "acme") == ["acme", "1500", "250"]
    assert "250 tokens/s" in later


def test_a_workers_tokens_per_second_is_the_difference_of_its_heartbeats_counts() -> None:
    first, second = _poll(), _poll(at=1004.0)
    first.cluster.workers[0].generated_tokens = 2000
    second.cluster.workers[0].generated_tokens = 2600
    text = _text(frame(second, first, []))
    assert _row(text, "iw-1-ab")[7] == "150"  # 600 tokens in 4 s
    assert _row(text, "trainer-1-cd")[-3] == "-"  # trainers generate none


def test_empty_sections_say_none_and_alerts_show_newest_first_after_current_problems() -> None:
    system = gateway_pb2.SystemStatus(missing_services=["audit"])
    poll = Poll(1000.0, scheduler_pb2.ClusterStatus(), [], system)
    alerts = [Alert(10.0, "older thing"), Alert(20.0, "newer thing")]
    text = _text(frame(poll, None, alerts))
    assert "WORKERS: none" in text and "RUNNING JOBS: none" in text
    rows = [" ".join(line.split()) for line in text.splitlines()]
    assert [row for row in rows if re.search("audit|older|newer", row)] == [
        "now audit: no instance registered",
        "00:00:20 newer thing",
        "00:00:10 older thing",
    ]


def _event(at: int = 0, **payload: object) -> events_pb2.Event:
    event = events_pb2.Event(**payload)  # type: ignore[arg-type]
    if at:
        event.time.CopyFrom(Timestamp(seconds=at))
    return event


def test_a_service_stopping_an_intrusion_and_a_failed_job_raise_alerts() -> None:
    stopped = events_pb2.ServiceLifecycle(
        phase=events_pb2.ServiceLifecycle.PHASE_STOPPED, reason="SIGTERM"
    )
    stopped.instance.service, stopped.instance.instance_id = "trainer", "trainer-1-cd"
    alert = alert_of(_event(at=30, service_lifecycle=stopped), received_at=99.0)
    assert alert == Alert(30.0, "trainer-1-cd stopped (SIGTERM)")
    intrusion = events_pb2.Intrusion(
        address="10.0.0.9", signal="bad_token", count=20, window_s=60, until=Timestamp(seconds=90)
    )
    alert = alert_of(_event(intrusion=intrusion), received_at=99.0)
    assert alert == Alert(99.0, "intrusion: 10.0.0.9 blocked until 00:01:30 (20 bad_token in 60s)")
    failed = events_pb2.JobStateChanged(
        job_id="job-7", current=common_pb2.JOB_STATE_FAILED, reason="out of memory"
    )
    alert = alert_of(_event(job_state_changed=failed), received_at=5.0)
    assert alert == Alert(5.0, "job job-7 failed: out of memory")


def test_progress_starts_and_ordinary_state_changes_raise_no_alert() -> None:
    started = events_pb2.ServiceLifecycle(phase=events_pb2.ServiceLifecycle.PHASE_STARTED)
    running = events_pb2.JobStateChanged(job_id="j", current=common_pb2.JOB_STATE_RUNNING)
    for event in (
        _event(service_lifecycle=started),
        _event(job_state_changed=running),
        _event(job_progress=events_pb2.JobProgress(job_id="j")),
    ):
        assert alert_of(event, 1.0) is None


def test_a_worker_gone_since_the_last_poll_is_an_alert() -> None:
    before, after = _poll(), _poll(at=1001.0)
    del after.cluster.workers[0]
    assert workers_lost(None, before) == []
    assert workers_lost(before, after) == [Alert(1001.0, "worker lost: iw-1-ab (no heartbeat)")]


def test_services_not_serving_and_parts_not_readable_are_current_problems() -> None:
    system = gateway_pb2.SystemStatus()
    bad = system.services.add(state=gateway_pb2.ServiceStatus.STATE_NOT_SERVING, detail="lag")
    bad.instance.service, bad.instance.instance_id = "audit", "audit-1"
    system.services.add(state=gateway_pb2.ServiceStatus.STATE_SERVING)
    poll = _poll(system=system, notes=["running jobs not shown: needs scope training"])
    assert problems(poll) == [
        "running jobs not shown: needs scope training",
        "audit-1 NOT_SERVING: lag",
    ]


@pytest.fixture
def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No stack or session of the host; global options for a gateway never called."""
    for name in [n for n in os.environ if n.startswith("LLMOS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LLMOS_SESSION", str(tmp_path / "session.json"))
    monkeypatch.setattr(top, "poll", lambda stub, timeout: _poll())
    return ["--gateway", "127.0.0.1:1", "--token", "t", "--insecure"]


def test_once_prints_one_plain_frame_and_exits(
    _offline: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_offline, "top", "--once"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    assert _row(out, "job-7")[:3] == ["job-7", "tiny", "40/100"]


def test_ctrl_c_leaves_the_live_view_with_status_0(
    _offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(top, "_follow", interrupted)
    assert main([*_offline, "top"]) == 0


def test_the_scheduler_counts_waiting_work_per_class_and_tenant() -> None:
    generations = [(NORMAL, "acme"), (0, "acme"), (BATCH, "zeta")]
    queues = queues_of(generations, jobs=[(NORMAL, "zeta")])
    assert [(q.priority, q.tenant, q.generations, q.jobs) for q in queues] == [
        (NORMAL, "acme", 2, 0),
        (NORMAL, "zeta", 0, 1),
        (BATCH, "zeta", 1, 0),
    ]


def test_a_tenant_sees_its_own_queue_entries_and_the_others_summed_per_class() -> None:
    status = scheduler_pb2.ClusterStatus(
        queues=queues_of(
            [(NORMAL, "acme"), (NORMAL, "beta"), (NORMAL, "zeta"), (BATCH, "zeta")],
            [(NORMAL, "beta")],
        )
    )
    seen = cluster_seen_by(status, "acme", own_jobs=())
    assert [(q.priority, q.tenant, q.generations, q.jobs) for q in seen.queues] == [
        (NORMAL, "", 2, 1),
        (NORMAL, "acme", 1, 0),
        (BATCH, "", 1, 0),
    ]


def test_the_audit_log_falling_behind_and_catching_up_are_alerts() -> None:
    behind = events_pb2.AuditLag(lag_s=93.4, pending=1200, threshold_s=60)
    alert = alert_of(_event(at=40, audit_lag=behind), received_at=99.0)
    assert alert == Alert(40.0, "audit log 93s behind (1200 records waiting)")
    caught_up = events_pb2.AuditLag(lag_s=2, caught_up=True, threshold_s=60)
    assert alert_of(_event(at=50, audit_lag=caught_up), received_at=99.0) == Alert(
        50.0, "audit log caught up"
    )
