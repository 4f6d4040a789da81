"""A training cluster for tests — a scheduler, two trainers (2 process slots each) and a
storage service on real NATS and Redis — and the client-side steps its tests share:
submit a job, look at it, wait for a state, cancel and wait for the slots to free."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import nats.errors
from google.protobuf.struct_pb2 import Struct
from nats.js.api import DeliverPolicy

from llmos import subjects
from llmos.ports import free_port
from llmos.v1 import common_pb2, events_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.corpus import TEXT
from tests.integration.storage_client import StorageProcess, start_storage
from tools.harness import Process, eventually, secrets_dir_of, start_process, start_service
from tools.standin import Principal, internal_channel

S = common_pb2.JobState
RESERVED_TENANT = "lab-r"  # 1 trainer slot is reserved for it


@dataclass
class Cluster:
    env: dict[str, str]
    logs: Path
    address: str
    scheduler: Process = field(init=False)
    storage: StorageProcess = field(init=False)
    trainers: list[Process] = field(default_factory=list)

    def start_scheduler(self) -> None:
        self.scheduler = start_service("services.scheduler", self.env, self.logs,
                                       address=self.address)  # fmt: skip

    def start_trainer(self) -> Process:
        """A trainer with a checkpoint directory of its own: a job resumed elsewhere gets
        its checkpoint from storage, as across machines."""
        checkpoints = self.logs.parent / f"checkpoints-{len(self.trainers)}"
        env = {**self.env, "LLMOS_LISTEN_ADDR": "127.0.0.1:0",
               "LLMOS_CHECKPOINT_DIR": str(checkpoints)}  # fmt: skip
        trainer = start_process("trainer", [sys.executable, "-m", "services.trainer"], env,
                                self.logs)  # fmt: skip
        self.trainers.append(trainer)
        return trainer

    def stub(self, tenant: str = "") -> scheduler_pb2_grpc.SchedulerStub:
        """The scheduler as the gateway calls it for a system admin, or for a user of
        `tenant`."""
        principal = (
            Principal(tenant=tenant, scopes=frozenset({"training"})) if tenant else Principal()
        )
        channel = internal_channel(
            self.address, "scheduler", secrets_dir_of(self.env), principal=principal
        )
        return scheduler_pb2_grpc.SchedulerStub(channel)

    def wait_for_trainers(self, count: int) -> None:
        stub = self.stub()
        wait_for(f"{count} trainers", lambda: len(trainers_alive(stub)) == count)

    def stop(self) -> None:
        for trainer in self.trainers:  # trainers report first
            trainer.signal(15)
        for process in (*self.trainers, self.scheduler):
            process.stop(40)
        self.storage.stop()


def start_cluster(env: dict[str, str], data_dir: Path) -> Cluster:
    """A scheduler, a storage service and two trainers on `env`'s NATS and Redis, once
    the scheduler sees both trainers (stopped by the caller, `Cluster.stop`)."""
    env = {
        **env,
        "LLMOS_DATA_DIR": str(data_dir / "data"),
        "LLMOS_TRAINER_PROCESSES": "2",
        "LLMOS_TRAINER_STOP_GRACE_S": "20",
        "LLMOS_WORKER_WARMUP_S": "0",
        "LLMOS_JOB_RESERVATIONS": f"tenant:{RESERVED_TENANT}=1",
    }
    cluster = Cluster(env, data_dir / "logs", f"127.0.0.1:{free_port()}")
    cluster.start_scheduler()
    cluster.storage = start_storage(env, data_dir / "store")
    try:
        cluster.start_trainer()
        cluster.start_trainer()
        cluster.wait_for_trainers(2)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    """`check()`'s first truthy value (a scheduler restarting meanwhile is "not yet")."""
    return eventually(check, timeout, what=what, interval=0.2, ignoring=(grpc.RpcError,))


def trainers_alive(stub: scheduler_pb2_grpc.SchedulerStub) -> list[scheduler_pb2.WorkerStatus]:
    status = stub.GetClusterStatus(scheduler_pb2.GetClusterStatusRequest(), timeout=5)
    return [w for w in status.workers if w.instance.service == "trainer"]


def spec(
    steps: int,
    processes: int = 1,
    priority: int = common_pb2.PRIORITY_NORMAL,
    checkpoint_every: int = 10,
    **config: Any,
) -> scheduler_pb2.JobSpec:
    settings = Struct()
    settings.update(
        {"steps": steps, "batch_size": 2, "seq_len": 32, "checkpoint_every": checkpoint_every,
         "eval_every": 20, "warmup_steps": 0, "text": TEXT, **config}
    )  # fmt: skip
    return scheduler_pb2.JobSpec(
        name="test-job",
        kind="training",
        priority=priority,  # type: ignore[arg-type]
        resources=common_pb2.Resources(
            cpu_millicores=1000, memory_bytes=256 << 20, processes=processes
        ),
        config=settings,
    )


def submit(
    stub: scheduler_pb2_grpc.SchedulerStub, tenant: str, job_spec: scheduler_pb2.JobSpec
) -> str:
    request = scheduler_pb2.SubmitJobRequest(tenant=tenant, owner="tester", spec=job_spec)
    return str(stub.SubmitJob(request, timeout=10).job_id)


def get(stub: scheduler_pb2_grpc.SchedulerStub, tenant: str, job_id: str) -> scheduler_pb2.Job:
    job: scheduler_pb2.Job = stub.GetJob(
        scheduler_pb2.GetJobRequest(tenant=tenant, job_id=job_id), timeout=5
    )
    return job


def wait_state(
    stub: scheduler_pb2_grpc.SchedulerStub, tenant: str, job_id: str, *states: int,
    timeout: float = 90,
) -> scheduler_pb2.Job:  # fmt: skip
    names = "/".join(S.Name(s) for s in states)
    job: scheduler_pb2.Job = wait_for(
        f"{job_id} to be {names}",
        lambda: (now := get(stub, tenant, job_id)).state in states and now,
        timeout,
    )
    return job


def cancel_all(stub: scheduler_pb2_grpc.SchedulerStub, tenant: str, ids: list[str]) -> None:
    for job_id in ids:
        if get(stub, tenant, job_id).state not in (
            S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED
        ):  # fmt: skip
            stub.CancelJob(scheduler_pb2.CancelJobRequest(tenant=tenant, job_id=job_id))
    # the trainers have let go of their slots
    wait_for(
        "trainers to stop the cancelled jobs",
        lambda: (
            not any(
                running.partition("@")[0] in ids
                for w in trainers_alive(stub)
                for running in w.running_jobs
            )
        ),
        timeout=60,
    )


def checkpointed(
    stub: scheduler_pb2_grpc.SchedulerStub, tenant: str, job_id: str, step: int
) -> bool:
    return get(stub, tenant, job_id).checkpoint_step >= step


async def job_events(nats_url: str, job_id: str) -> list[events_pb2.Event]:
    """Every event JetStream kept for the job, in order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        subscription = await js.subscribe(
            subjects.job_event(job_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        found: list[events_pb2.Event] = []
        while True:
            try:
                msg = await subscription.next_msg(timeout=2)
            except nats.errors.TimeoutError:
                return found
            found.append(events_pb2.Event.FromString(msg.data))
    finally:
        await nc.close()
