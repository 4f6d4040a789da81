"""Jobs for the shared stack's tests: one that runs until cancelled, cheaply."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from google.protobuf.struct_pb2 import Struct

from llmos.v1 import common_pb2, gateway_pb2_grpc, scheduler_pb2
from tests.corpus import TEXT
from tools.harness import eventually

STEPS = 1_000_000  # never reached: the job is cancelled once seen


def endless_job(name: str) -> scheduler_pb2.JobSpec:
    """The cheapest job that keeps running: a tiny model, a tiny batch, no checkpoints or
    evaluations on the way."""
    return tiny_job(name, STEPS, checkpoint_every=STEPS)


def tiny_job(name: str, steps: int, checkpoint_every: int) -> scheduler_pb2.JobSpec:
    """A training job of a tiny model on a tiny batch, evaluated only at its end."""
    config = Struct()
    config.update(
        {"steps": steps, "batch_size": 1, "seq_len": 16, "warmup_steps": 0, "text": TEXT,
         "checkpoint_every": checkpoint_every, "eval_every": steps}
    )  # fmt: skip
    return scheduler_pb2.JobSpec(
        name=name,
        kind="training",
        resources=common_pb2.Resources(cpu_millicores=1000, memory_bytes=256 << 20, processes=1),
        config=config,
    )


def running_on(stub: gateway_pb2_grpc.GatewayStub, job_id: str) -> list[str]:
    """The trainers whose heartbeats say they run the job."""
    status = stub.GetClusterStatus(scheduler_pb2.GetClusterStatusRequest(), timeout=10)
    return [
        w.instance.instance_id
        for w in status.workers
        if any(key.startswith(f"{job_id}@") for key in w.running_jobs)
    ]


@contextlib.contextmanager
def running_job(stub: gateway_pb2_grpc.GatewayStub, name: str) -> Iterator[scheduler_pb2.Job]:
    """An endless job, once it runs and reports its steps; cancelled, and gone from every
    trainer, when the block ends."""
    job = stub.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=endless_job(name)), timeout=30)
    request = scheduler_pb2.GetJobRequest(job_id=job.job_id)
    try:
        eventually(
            lambda: stub.GetJob(request, timeout=10).progress.total_steps == STEPS,
            60, what=f"job {name} running and reporting its steps", interval=0.2,
        )  # fmt: skip
        yield job
    finally:
        stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=job.job_id), timeout=30)
        eventually(lambda: not running_on(stub, job.job_id), 60, what=f"job {name} stopped")
