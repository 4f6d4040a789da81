"""`llmos top --once`: one frame of the cluster for scripts, showing the workers and a
running job with its step."""

from __future__ import annotations

import re

from llmos.v1 import gateway_pb2_grpc, scheduler_pb2
from tests.e2e.conftest import RunningStack
from tests.e2e.shared.jobs import STEPS, endless_job, running_on
from tools.harness import eventually


def test_top_once_shows_the_workers_and_a_running_job(stack: RunningStack) -> None:
    token = stack.client_token("top-viewer", ["training", "cluster:read", "events:read"])
    with stack.channel(token) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        job = stub.SubmitJob(
            scheduler_pb2.SubmitJobRequest(spec=endless_job("top-e2e")), timeout=30
        )
        request = scheduler_pb2.GetJobRequest(job_id=job.job_id)
        try:
            eventually(
                lambda: stub.GetJob(request, timeout=10).progress.total_steps == STEPS,
                60, what="the job running and reporting its steps", interval=0.2,
            )  # fmt: skip
            result = stack.cli("top", "--once", LLMOS_TOKEN=token)
            workers = stub.GetClusterStatus(scheduler_pb2.GetClusterStatusRequest(), timeout=10)
        finally:
            stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=job.job_id), timeout=30)
            eventually(lambda: not running_on(stub, job.job_id), 60, what="the job stopped")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    instances = {w.instance.instance_id for w in workers.workers}
    assert {"inference-worker", "trainer"} <= {w.instance.service for w in workers.workers}
    assert instances <= {line.split()[0] for line in lines if line.split()}, result.stdout
    job_row = re.compile(rf"^{job.job_id}\s+top-e2e\s+\d+/{STEPS}\s")
    assert any(job_row.match(line) for line in lines), result.stdout
