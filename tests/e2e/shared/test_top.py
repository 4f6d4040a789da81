"""`llmos top --once`: one frame of the cluster for scripts, showing the workers and a
running job with its step."""

from __future__ import annotations

import re

from llmos.v1 import gateway_pb2_grpc, scheduler_pb2
from tests.e2e.conftest import RunningStack
from tests.e2e.shared.jobs import STEPS, running_job


def test_top_once_shows_the_workers_and_a_running_job(stack: RunningStack) -> None:
    token = stack.client_token("top-viewer", ["training", "cluster:read", "events:read"])
    with stack.channel(token) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        with running_job(stub, "top-e2e") as job:
            result = stack.cli("top", "--once", LLMOS_TOKEN=token)
            workers = stub.GetClusterStatus(scheduler_pb2.GetClusterStatusRequest(), timeout=10)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    instances = {w.instance.instance_id for w in workers.workers}
    assert {"inference-worker", "trainer"} <= {w.instance.service for w in workers.workers}
    assert instances <= {line.split()[0] for line in lines if line.split()}, result.stdout
    job_row = re.compile(rf"^{job.job_id}\s+top-e2e\s+\d+/{STEPS}\s")
    assert any(job_row.match(line) for line in lines), result.stdout
