"""What the scheduler counts for Prometheus: generations running and waiting by priority
class, jobs queued and running by class, and workers serving or not. Gauges are set from
the scheduler's own loop (its tables are not thread-safe), each tick, so a scrape reads
at most one tick old."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prometheus_client import Gauge

from llmos.priority import PriorityClass
from llmos.v1 import common_pb2, scheduler_pb2
from llmos.workers import INFERENCE_WORKER, TRAINER
from services.scheduler.fairshare import WorkItem

S = common_pb2.JobState
CLASSES = [c.word for c in PriorityClass]

REQUESTS_RUNNING = Gauge(
    "llmos_requests_running", "Generations this scheduler has on workers.", ["priority"]
)
REQUESTS_WAITING = Gauge(
    "llmos_requests_waiting", "Generations waiting in this scheduler's queues.", ["priority"]
)
JOBS_QUEUED = Gauge("llmos_jobs_queued", "Jobs waiting for trainers.", ["priority"])
JOBS_RUNNING = Gauge(
    "llmos_jobs_running", "Jobs placed on trainers (scheduled or running).", ["priority"]
)
WORKERS = Gauge(
    "llmos_workers",
    "Live workers and trainers: serving, or alive but not serving (lost a dependency).",
    ["role", "state"],
)


def observe_generations(running: Iterable[WorkItem], waiting: Iterable[WorkItem]) -> None:
    for gauge, items in ((REQUESTS_RUNNING, running), (REQUESTS_WAITING, waiting)):
        counts = Counter(item.priority.word for item in items)
        for name in CLASSES:
            gauge.labels(name).set(counts[name])


def observe_jobs(jobs: Iterable[scheduler_pb2.Job]) -> None:
    """The active jobs (the leader's view; other replicas report none)."""
    queued: Counter[str] = Counter()
    running: Counter[str] = Counter()
    for job in jobs:
        name = PriorityClass.parse(job.spec.priority).word
        if job.state == S.JOB_STATE_QUEUED:
            queued[name] += 1
        elif job.state in (S.JOB_STATE_SCHEDULED, S.JOB_STATE_RUNNING):
            running[name] += 1
    for name in CLASSES:
        JOBS_QUEUED.labels(name).set(queued[name])
        JOBS_RUNNING.labels(name).set(running[name])


def observe_workers(workers: Iterable[scheduler_pb2.WorkerStatus]) -> None:
    counts = Counter(
        (w.instance.service, "not_serving" if w.unhealthy else "serving") for w in workers
    )
    for service in (INFERENCE_WORKER, TRAINER):
        for state in ("serving", "not_serving"):
            WORKERS.labels(service, state).set(counts[service, state])
