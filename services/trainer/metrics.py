"""What a trainer counts for Prometheus: each running job's loss, step and tokens per
second, labelled by tenant and job_id (not `job`: Prometheus gives each target that
label). Bounded: a trainer runs a handful of jobs at once, and a job's series leave when
its attempt ends here."""

from __future__ import annotations

import contextlib

from prometheus_client import Gauge

from llmos.v1 import common_pb2

TRAINING_TOKENS_PER_SECOND = Gauge(
    "llmos_training_tokens_per_second",
    "Training throughput of a job's latest progress report.",
    ["tenant", "job_id"],
)
TRAINING_LOSS = Gauge(
    "llmos_training_loss", "Training loss of a job's latest progress report.", ["tenant", "job_id"]
)
TRAINING_STEP = Gauge("llmos_training_step", "Step a job has reached.", ["tenant", "job_id"])


def observe_progress(tenant: str, job: str, progress: common_pb2.TrainingProgress) -> None:
    TRAINING_TOKENS_PER_SECOND.labels(tenant, job).set(progress.tokens_per_s)
    TRAINING_LOSS.labels(tenant, job).set(progress.loss)
    TRAINING_STEP.labels(tenant, job).set(progress.step)


def forget(tenant: str, job: str) -> None:
    """The job's attempt ended here: its series leave this trainer's metrics."""
    for gauge in (TRAINING_TOKENS_PER_SECOND, TRAINING_LOSS, TRAINING_STEP):
        with contextlib.suppress(KeyError):
            gauge.remove(tenant, job)
