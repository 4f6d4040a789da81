"""The training leader's decisions (pure): leases that lapse, the order jobs are placed
in, preemption and its barrier, and what a trainer's report does to its job."""

from __future__ import annotations

from llmos.v1 import common_pb2, scheduler_pb2
from services.scheduler.options import SchedulerOptions
from services.scheduler.training_plan import (
    PREEMPT_RESEND_S,
    Assign,
    HandBack,
    Move,
    Preempt,
    RecordProgress,
    Requeue,
    RequeuePreempted,
    SetResult,
    TrainingPlanner,
    from_an_assigned_trainer,
    report_is_stale,
    report_steps,
    sent_by_its_trainer,
)

S = common_pb2.JobState
GIB = 1 << 30


def trainer(
    name: str, processes: int = 2, running: tuple[str, ...] = ()
) -> scheduler_pb2.WorkerStatus:
    return scheduler_pb2.WorkerStatus(
        instance=common_pb2.ServiceInstance(
            service="trainer",
            instance_id=name,
            capacity=common_pb2.Resources(
                processes=processes, cpu_millicores=processes * 1000, memory_bytes=8 * GIB
            ),
        ),
        running_jobs=list(running),
    )


def job(
    job_id: str,
    state: int = S.JOB_STATE_QUEUED,
    priority: str = "normal",
    processes: int = 1,
    tenant: str = "lab",
    created: int = 0,
    placed: tuple[tuple[str, int], ...] = (),
    started: int = 0,
    updated: int = 1000,
) -> scheduler_pb2.Job:
    made = scheduler_pb2.Job(job_id=job_id, tenant=tenant, state=state, attempt=1)  # type: ignore[arg-type]
    made.spec.priority = common_pb2.Priority.Value(f"PRIORITY_{priority.upper()}")  # type: ignore[assignment]
    made.spec.resources.CopyFrom(
        common_pb2.Resources(processes=processes, cpu_millicores=1000, memory_bytes=GIB)
    )
    made.created_at.seconds = created
    made.scheduled_at.seconds = started
    made.updated_at.seconds = updated
    made.placement.extend(scheduler_pb2.Placement(instance_id=t, processes=n) for t, n in placed)
    return made


def planner(**options: object) -> TrainingPlanner:
    return TrainingPlanner(SchedulerOptions(**options), started_at=0.0, grace_s=5.0)  # type: ignore[arg-type]


def table(*statuses: scheduler_pb2.WorkerStatus) -> dict[str, scheduler_pb2.WorkerStatus]:
    return {s.instance.instance_id: s for s in statuses}


def test_a_job_whose_trainer_stopped_heartbeating_is_handed_back() -> None:
    running = job("j", S.JOB_STATE_RUNNING, placed=(("gone", 1),))
    (action,) = planner().leases([running], table(trainer("other")), now=10.0)
    assert isinstance(action, HandBack) and action.job.job_id == "j"
    assert action.why == "its trainer gone stopped heartbeating"


def test_nothing_is_handed_back_while_the_scheduler_is_just_starting() -> None:
    running = job("j", S.JOB_STATE_RUNNING, placed=(("gone", 1),))
    assert planner().leases([running], {}, now=4.0) == []


def test_a_trainer_silent_about_an_attempt_for_the_grace_period_loses_it() -> None:
    rules = planner()
    running = job("j", S.JOB_STATE_RUNNING, placed=(("t", 1),))
    silent = table(trainer("t"))
    assert rules.leases([running], silent, now=10.0) == []  # the clock starts
    assert rules.leases([running], silent, now=15.0) == []
    (action,) = rules.leases([running], silent, now=15.5)
    assert isinstance(action, HandBack) and "no longer runs it" in action.why
    listed = table(trainer("t", running=("j@1",)))
    assert rules.leases([running], listed, now=30.0) == []


def test_a_job_left_preempted_is_requeued() -> None:
    left = job("j", S.JOB_STATE_PREEMPTED)
    assert planner().leases([left], {}, now=10.0) == [Requeue(left)]


def test_queued_jobs_go_by_class_then_the_tenant_holding_least_then_age() -> None:
    holding = job("held", S.JOB_STATE_RUNNING, tenant="busy", placed=(("a", 1),))
    queued = [
        job("old-busy", tenant="busy", created=1),
        job("new-idle", tenant="idle", created=5),
        job("batch", priority="batch", tenant="idle", created=0),
        job("urgent", priority="high", tenant="busy", created=9),
    ]
    actions = planner().placements(
        [holding, *queued], table(trainer("a", 8)), now=10.0, wall_now=1000.0
    )
    assert [a.job.job_id for a in actions if isinstance(a, Assign)] == [
        "urgent",
        "new-idle",
        "old-busy",
        "batch",
    ]


def test_a_gang_is_placed_whole_or_not_at_all() -> None:
    actions = planner().placements(
        [job("big", processes=3)], table(trainer("a"), trainer("b")), now=10.0, wall_now=1000.0
    )
    (assign,) = actions
    assert isinstance(assign, Assign) and assign.placement == (("a", 2), ("b", 1))
    too_big = planner().placements(
        [job("huge", processes=5)], table(trainer("a"), trainer("b")), now=10.0, wall_now=1000.0
    )
    assert too_big == []


def test_a_higher_class_job_preempts_the_newest_lower_one_and_holds_the_line() -> None:
    rules = planner()
    old = job("old", S.JOB_STATE_RUNNING, priority="batch", placed=(("a", 1),), started=1)
    new = job("new", S.JOB_STATE_RUNNING, priority="batch", placed=(("a", 1),), started=2)
    urgent = job("urgent", priority="critical")
    waiting = job("bulk", priority="batch")
    jobs = [old, new, urgent, waiting]
    actions = rules.placements(jobs, table(trainer("a")), now=10.0, wall_now=1000.0)
    assert actions == [Preempt(new, "preempted for critical job urgent")]  # bulk waits
    assert rules.placements(jobs, table(trainer("a")), now=11.0, wall_now=1000.0) == []
    resent = rules.placements(
        jobs, table(trainer("a")), now=11.0 + PREEMPT_RESEND_S, wall_now=1000.0
    )
    assert resent == [Preempt(new, "preempted for critical job urgent")]


def test_once_the_victim_stopped_the_waiting_job_takes_its_place() -> None:
    rules = planner()
    new = job("new", S.JOB_STATE_RUNNING, priority="batch", placed=(("a", 1),), started=2)
    urgent = job("urgent", priority="critical")
    rules.placements([new, urgent], table(trainer("a", 1)), now=10.0, wall_now=1000.0)
    rules.preempted("new")
    actions = rules.placements([urgent], table(trainer("a", 1)), now=12.0, wall_now=1000.0)
    assert [(type(a), a.job.job_id) for a in actions] == [(Assign, "urgent")]


def test_a_job_blocked_past_the_backfill_limit_stops_jobs_behind_it_from_starting() -> None:
    blocked = job("blocked", processes=2, created=0, updated=0)
    small = job("small", created=1)
    running = job("r", S.JOB_STATE_RUNNING, placed=(("a", 1),))
    patient = planner(backfill_limit_s=600.0)
    jobs = [running, blocked, small]
    early = patient.placements(jobs, table(trainer("a")), now=10.0, wall_now=100.0)
    assert [a.job.job_id for a in early if isinstance(a, Assign)] == ["small"]  # backfill
    late = patient.placements(jobs, table(trainer("a")), now=10.0, wall_now=700.0)
    assert late == []


def report(state: int, **fields: object) -> scheduler_pb2.JobReport:
    return scheduler_pb2.JobReport(job_id="j", attempt=1, state=state, **fields)  # type: ignore[arg-type]


def test_the_first_running_report_moves_a_scheduled_job_to_running() -> None:
    scheduled = job("j", S.JOB_STATE_SCHEDULED)
    progress = common_pb2.TrainingProgress(step=3)
    assert report_steps(scheduled, report(S.JOB_STATE_RUNNING, progress=progress)) == [
        Move(S.JOB_STATE_RUNNING, "running"),
        RecordProgress(),
    ]
    running = job("j", S.JOB_STATE_RUNNING)
    assert report_steps(running, report(S.JOB_STATE_RUNNING)) == []


def test_a_success_keeps_progress_and_result_then_ends_the_job() -> None:
    running = job("j", S.JOB_STATE_RUNNING)
    done = report(
        S.JOB_STATE_SUCCEEDED, checkpoint_step=10, result="tune@2", reason="training finished"
    )
    assert report_steps(running, done) == [
        RecordProgress(),
        SetResult("tune@2"),
        Move(S.JOB_STATE_SUCCEEDED, "training finished"),
    ]


def test_a_preempted_report_requeues_the_job_and_a_failure_never_passes_through_running() -> None:
    running = job("j", S.JOB_STATE_RUNNING)
    preempted = report(S.JOB_STATE_PREEMPTED, reason="preempted for critical job x")
    assert report_steps(running, preempted) == [
        Move(S.JOB_STATE_PREEMPTED, "preempted for critical job x"),
        RequeuePreempted(),
    ]
    scheduled = job("j", S.JOB_STATE_SCHEDULED)
    failed = report(S.JOB_STATE_FAILED, reason="the dataset is empty")
    assert report_steps(scheduled, failed) == [Move(S.JOB_STATE_FAILED, "the dataset is empty")]


def test_a_report_counts_only_from_a_trainer_the_job_is_placed_on_on_its_own_subject() -> None:
    placed = job("j", S.JOB_STATE_RUNNING, placed=(("trainer-1-aaaaaaaaaaaa", 1),))
    mine = report(S.JOB_STATE_SUCCEEDED, instance_id="trainer-1-aaaaaaaaaaaa")
    other = report(S.JOB_STATE_SUCCEEDED, instance_id="trainer-2-bbbbbbbbbbbb")
    assert from_an_assigned_trainer(placed, mine)
    assert not from_an_assigned_trainer(placed, other)
    own_subject = "llmos.sched.jobreport.trainer-1.trainer-1-aaaaaaaaaaaa"
    assert sent_by_its_trainer(own_subject, mine)
    assert not sent_by_its_trainer(own_subject, other)  # trainer 1 posing as trainer 2
    assert not sent_by_its_trainer(own_subject, report(S.JOB_STATE_RUNNING, instance_id="a.b"))


def test_a_report_about_another_attempt_or_an_ended_job_is_stale() -> None:
    assert report_is_stale(None, report(S.JOB_STATE_RUNNING))
    assert report_is_stale(job("j", S.JOB_STATE_QUEUED), report(S.JOB_STATE_RUNNING))
    moved_on = job("j", S.JOB_STATE_RUNNING)
    moved_on.attempt = 2
    assert report_is_stale(moved_on, report(S.JOB_STATE_RUNNING))
    assert not report_is_stale(job("j", S.JOB_STATE_RUNNING), report(S.JOB_STATE_RUNNING))
