"""Training jobs on real trainers: a job runs to success with progress; a gang is placed
whole or not at all (spanning two trainers under torchrun); a reservation is honoured; a
higher-priority job preempts a lower one, which checkpoints, is requeued and resumes; and
kill -9 of a trainer or of the scheduler loses no job. Real scheduler and trainer
processes (each offering 2 process slots) on real NATS and Redis, driven through the
scheduler's API (the cluster: `tests/integration/training_cluster.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import grpc
import pytest

from llmos.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc, storage_pb2
from tests.corpus import TEXT
from tests.integration.conftest import AuditTap, gateway_env
from tests.integration.storage_client import model_files, requests
from tests.integration.training_cluster import (
    RESERVED_TENANT,
    Cluster,
    cancel_all,
    checkpointed,
    get,
    job_events,
    spec,
    start_cluster,
    submit,
    trainers_alive,
    wait_for,
    wait_state,
)
from tools.devstack.infra import NatsServer, RedisServer

S = common_pb2.JobState


@pytest.fixture(scope="module")
def cluster(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    running = start_cluster(
        gateway_env(nats_server, own_redis), tmp_path_factory.mktemp("training")
    )
    try:
        yield running
    finally:
        running.stop()


async def test_a_job_runs_to_success_with_every_transition_and_its_progress_published(
    cluster: Cluster, nats_server: NatsServer
) -> None:
    stub = cluster.stub()
    async with AuditTap(nats_server.url, "llmos.audit.>") as tap:
        job_id = submit(stub, "lab-a", spec(steps=400, checkpoint_every=100))
        watched = await asyncio.to_thread(
            lambda: list(
                stub.WatchJob(
                    scheduler_pb2.GetJobRequest(tenant="lab-a", job_id=job_id), timeout=120
                )
            )
        )
        # records are published asynchronously, each source on its own: wait for both last ones
        await tap.wait_for(source="trainer", action="job.attempt.end", resource=f"job/{job_id}@1")
        await tap.wait_for(source="scheduler", action="job.succeeded", resource=f"job/{job_id}")
    final = watched[-1]
    assert final.state == S.JOB_STATE_SUCCEEDED, final.reason
    assert any(0 < u.progress.step < 400 for u in watched), "WatchJob streamed no progress"
    assert final.reason == "training finished: registered test-job@1" and final.attempt == 1
    assert final.result == "test-job@1"
    registered = cluster.storage.stub().GetModelVersion(
        storage_pb2.GetModelVersionRequest(tenant="lab-a", model="test-job", version=1)
    )
    assert registered.lineage["job"] == job_id
    assert registered.metadata["method"] == "from scratch"
    assert registered.metadata["context_length"] == 512
    assert set(registered.files) == {"config.json", "model.safetensors"}
    assert final.checkpoint_step == 400 and final.progress.step == 400
    assert 0 < final.progress.val_loss < 5.5 and final.progress.tokens_per_s > 0
    assert len(final.placement) == 1 and final.placement[0].processes == 1
    events = await job_events(nats_server.url, job_id)
    changes = [e.job_state_changed.current for e in events if e.HasField("job_state_changed")]
    assert changes == [
        S.JOB_STATE_QUEUED, S.JOB_STATE_SCHEDULED, S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED
    ]  # fmt: skip
    steps = [e.job_progress.progress.step for e in events if e.HasField("job_progress")]
    assert steps and steps == sorted(steps) and steps[-1] == 400
    assert all(e.tenant == "lab-a" for e in events)
    # every transition is audited by the scheduler, the attempt by the trainer that ran it
    decided = [r for r in tap.records if r.source == "scheduler" and r.resource == f"job/{job_id}"]
    assert [r.action for r in decided] == [
        "job.queued", "job.scheduled", "job.running", "job.succeeded"
    ]  # fmt: skip
    assert all(r.tenant == "lab-a" and r.outcome == "OK" for r in decided)
    ran = [r for r in tap.records if r.source == "trainer" and r.resource == f"job/{job_id}@1"]
    assert [(r.action, r.outcome) for r in ran] == [
        ("job.attempt.start", "OK"), ("job.attempt.end", "OK")
    ]  # fmt: skip
    assert ran[-1].detail == "training finished: registered test-job@1"


def test_a_job_trains_on_a_dataset_from_storage(cluster: Cluster) -> None:
    storage = cluster.storage.stub()
    blob = storage.UploadBlob(requests("lab-d", TEXT.encode()))
    storage.CreateDataset(
        storage_pb2.CreateDatasetRequest(tenant="lab-d", name="readme", sha256=blob.sha256)
    )
    stub = cluster.stub()
    job_spec = spec(steps=30)
    del job_spec.config.fields["text"]
    job_spec.config.update({"dataset": "readme"})
    job_id = submit(stub, "lab-d", job_spec)
    done = wait_state(stub, "lab-d", job_id, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED)
    assert done.state == S.JOB_STATE_SUCCEEDED, done.reason
    assert done.progress.step == 30 and 0 < done.progress.val_loss < 5.5
    model, _, version = done.result.partition("@")
    registered = cluster.storage.stub().GetModelVersion(
        storage_pb2.GetModelVersionRequest(tenant="lab-d", model=model, version=int(version))
    )
    assert registered.lineage["dataset"]["sha256"] == blob.sha256


@pytest.mark.parametrize(
    ("tenant", "config", "sentence"),
    [
        ("lab-d", {"dataset": "nope"}, "spec.config.dataset: tenant 'lab-d' has no dataset 'nope'"),
        ("lab-e", {"dataset": "readme"}, "tenant 'lab-e' has no dataset 'readme'"),
        ("lab-d", {"dataset": "empty"}, "spec.config.dataset: 'empty' is empty"),
        ("lab-d", {"base_model": "ghost", "text": "x"}, "no model 'ghost' is in the registry"),
        (  # another tenant's private model is, to this one, a model that does not exist
            "lab-e",
            {"base_model": "private-base", "text": "x"},
            "spec.config.base_model: no model 'private-base' is in the registry",
        ),
        ("lab-d", {"learning_rate": 0, "text": "x"}, "spec.config.learning_rate: must be above 0"),
        ("lab-d", {"seq_len": 4096, "text": "x"}, "above the model's context of 512"),
        (
            "lab-d",
            {"batch_size": 4096, "seq_len": 512, "text": "x"},
            "spec.resources.memory_bytes: the job needs about 12802 MiB per process (weights, "
            "gradients, AdamW state, activations) but reserves 256 MiB",
        ),
    ],
    ids=[
        "unknown dataset",
        "another tenant's",
        "empty",
        "unknown base",
        "another tenant's base",
        "lr 0",
        "seq_len",
        "batch too big for its memory",
    ],
)
def test_bad_training_inputs_are_refused_at_submit(
    cluster: Cluster, tenant: str, config: dict[str, Any], sentence: str
) -> None:
    storage = cluster.storage.stub()
    empty = storage.UploadBlob(requests("lab-d", b""))
    with contextlib.suppress(grpc.RpcError):  # made by an earlier case
        storage.CreateDataset(
            storage_pb2.CreateDatasetRequest(tenant="lab-d", name="empty", sha256=empty.sha256)
        )
    if config.get("base_model") == "private-base":
        storage.CreateModelVersion(
            storage_pb2.CreateModelVersionRequest(
                tenant="lab-d", model="private-base", files=model_files(storage, "lab-d", 1)
            )
        )
    job_spec = spec(steps=10)
    del job_spec.config.fields["text"]
    job_spec.config.update(config)
    with pytest.raises(grpc.RpcError) as caught:
        submit(cluster.stub(), tenant, job_spec)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sentence in (caught.value.details() or "")


def test_a_gang_runs_whole_or_not_at_all(cluster: Cluster) -> None:
    stub = cluster.stub()
    holder = submit(stub, "lab-a", spec(steps=1_000_000, processes=2))
    wait_state(stub, "lab-a", holder, S.JOB_STATE_RUNNING)
    # 2 of the 4 slots are taken and 1 is reserved for lab-r: a 3-process gang must wait
    gang = submit(stub, "lab-a", spec(steps=12, processes=3))
    time.sleep(3)
    assert get(stub, "lab-a", gang).state == S.JOB_STATE_QUEUED
    running = {j for w in trainers_alive(stub) for j in w.running_jobs}
    assert not any(j.startswith(gang) for j in running)  # no part of it started
    stub.CancelJob(scheduler_pb2.CancelJobRequest(tenant="lab-a", job_id=holder))
    done = wait_state(stub, "lab-a", gang, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, timeout=180)
    assert done.state == S.JOB_STATE_SUCCEEDED, done.reason
    assert sorted(p.processes for p in done.placement) == [1, 2]  # spread over both
    assert len({p.instance_id for p in done.placement}) == 2
    assert done.checkpoint_step == 12
    cancel_all(stub, "lab-a", [holder])


def test_a_reservation_is_honoured(cluster: Cluster) -> None:
    stub = cluster.stub()
    others = [submit(stub, "lab-a", spec(steps=1_000_000)) for _ in range(4)]
    wait_for(
        "three of lab-a's jobs to run",
        lambda: sum(get(stub, "lab-a", j).state == S.JOB_STATE_RUNNING for j in others) == 3,
    )
    time.sleep(2)
    states = [get(stub, "lab-a", j).state for j in others]
    assert states.count(S.JOB_STATE_QUEUED) == 1  # the reserved slot stays free for lab-r
    # which jobs run where is each tenant's own business; a system admin sees them all
    as_admin = {j.partition("@")[0] for w in trainers_alive(stub) for j in w.running_jobs}
    as_lab_a = {j.partition("@")[0] for w in trainers_alive(cluster.stub("lab-a"))
                for j in w.running_jobs}  # fmt: skip
    as_lab_b = [j for w in trainers_alive(cluster.stub("lab-b")) for j in w.running_jobs]
    assert as_admin == as_lab_a and as_admin <= set(others) and as_admin
    assert as_lab_b == []
    reserved = submit(stub, RESERVED_TENANT, spec(steps=1_000_000))
    wait_state(stub, RESERVED_TENANT, reserved, S.JOB_STATE_RUNNING, timeout=30)
    assert [get(stub, "lab-a", j).state for j in others].count(S.JOB_STATE_QUEUED) == 1
    cancel_all(stub, RESERVED_TENANT, [reserved])
    cancel_all(stub, "lab-a", others)


def test_a_higher_priority_job_preempts_a_lower_one_which_checkpoints_and_resumes(
    cluster: Cluster,
) -> None:
    stub = cluster.stub()
    batch = [
        submit(stub, "lab-a", spec(steps=1_000_000, priority=common_pb2.PRIORITY_BATCH))
        for _ in range(3)
    ]
    try:
        for job_id in batch:  # all usable slots are busy and every job has checkpointed
            wait_for(f"{job_id} to checkpoint", partial(checkpointed, stub, "lab-a", job_id, 60))
        # attempts so far (an assignment a busy trainer refused counts as one too)
        before = {j: get(stub, "lab-a", j).attempt for j in batch}
        urgent = submit(stub, "lab-a", spec(steps=30, priority=common_pb2.PRIORITY_HIGH))
        done = wait_state(stub, "lab-a", urgent, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED)
        assert done.state == S.JOB_STATE_SUCCEEDED, done.reason
        preempted = [j for j in batch if get(stub, "lab-a", j).attempt > before[j]]
        assert len(preempted) == 1, "exactly one batch job should have made room"
        victim = preempted[0]
        saved = get(stub, "lab-a", victim).checkpoint_step
        assert saved >= 60  # it checkpointed before it stopped
        job = wait_for(
            "the preempted job to run again",
            lambda: (
                (j := get(stub, "lab-a", victim)).state == S.JOB_STATE_RUNNING
                and j.progress.step > 0
                and j
            ),
        )
        # a new attempt: usually the next, but an assignment a trainer refused while the
        # urgent job's processes were still ending counts as one too (seen: +2)
        assert job.attempt > before[victim]
        # its first report after the restart is past the checkpoint: it resumed from there
        assert job.progress.step > saved
        others = [j for j in batch if j != victim]
        # nobody else was touched
        assert all(get(stub, "lab-a", j).attempt == before[j] for j in others)
    finally:
        cancel_all(stub, "lab-a", batch)


def test_preemption_is_seen_as_preempted_then_queued(cluster: Cluster) -> None:
    """The lifecycle events of a preemption, in order, with the sentence saying why."""
    stub = cluster.stub()
    batch = [
        submit(stub, "lab-b", spec(steps=1_000_000, priority=common_pb2.PRIORITY_BATCH))
        for _ in range(3)
    ]
    for job_id in batch:
        wait_state(stub, "lab-b", job_id, S.JOB_STATE_RUNNING)
    seen: dict[str, list[tuple[int, str]]] = {j: [] for j in batch}
    streams = {
        j: stub.WatchJob(scheduler_pb2.GetJobRequest(tenant="lab-b", job_id=j), timeout=90)
        for j in batch
    }

    def watch(job_id: str) -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled below
            for update in streams[job_id]:
                seen[job_id].append((update.state, update.reason))

    threads = [threading.Thread(target=watch, args=(j,), daemon=True) for j in batch]
    for thread in threads:
        thread.start()
    time.sleep(1)
    before = {j: get(stub, "lab-b", j).attempt for j in batch}
    urgent = submit(stub, "lab-b", spec(steps=10, priority=common_pb2.PRIORITY_CRITICAL))
    wait_state(stub, "lab-b", urgent, S.JOB_STATE_SUCCEEDED)
    wait_for(
        "the preempted job to run again",
        lambda: (
            any(get(stub, "lab-b", j).attempt > before[j] for j in batch)
            and all(get(stub, "lab-b", j).state == S.JOB_STATE_RUNNING for j in batch)
        ),
    )
    time.sleep(1)  # the last changes reach the watchers
    for stream in streams.values():
        stream.cancel()
    for thread in threads:
        thread.join(10)
    victims = [
        j for j, updates in seen.items() if any(s == S.JOB_STATE_PREEMPTED for s, _ in updates)
    ]
    assert len(victims) == 1
    states = [s for s, _ in seen[victims[0]]]
    at = states.index(S.JOB_STATE_PREEMPTED)
    assert states[at + 1] == S.JOB_STATE_QUEUED
    reason = dict(seen[victims[0]])[S.JOB_STATE_PREEMPTED]
    assert f"preempted for critical job {urgent}; checkpointed at step" in reason
    cancel_all(stub, "lab-b", batch)


def test_a_trainer_killed_mid_job_loses_no_work(cluster: Cluster) -> None:
    stub = cluster.stub()
    job_id = submit(stub, "lab-a", spec(steps=600, checkpoint_every=20))
    job = wait_for(  # a checkpoint that reached storage (another disk can resume it)
        "a stored checkpoint",
        lambda: (j := get(stub, "lab-a", job_id)).checkpoint_blob and j.checkpoint_step >= 40 and j,
    )
    assert job.state == S.JOB_STATE_RUNNING
    victim_id = job.placement[0].instance_id
    victim = next(
        p for p in cluster.trainers
        if any(w.instance.pid == p.pid and w.instance.instance_id == victim_id
               for w in trainers_alive(stub))
    )  # fmt: skip
    victim.kill()
    cluster.trainers.remove(victim)
    try:
        _resumes_elsewhere(cluster, stub, job_id, victim_id)
    finally:
        cluster.start_trainer()  # back to two trainers for the next test
        cluster.wait_for_trainers(2)


def _resumes_elsewhere(
    cluster: Cluster, stub: scheduler_pb2_grpc.SchedulerStub, job_id: str, victim_id: str
) -> None:
    requeued = wait_for(
        "the job to be handed back",
        lambda: (j := get(stub, "lab-a", job_id)).attempt >= 2 and j,
    )
    assert f"its trainer {victim_id} stopped heartbeating" in requeued.reason or (
        requeued.placement and requeued.placement[0].instance_id != victim_id
    )
    done = wait_state(stub, "lab-a", job_id, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, timeout=180)
    assert done.state == S.JOB_STATE_SUCCEEDED, done.reason
    assert done.placement[0].instance_id != victim_id
    assert done.progress.step == 600 and done.attempt == 2
    # it resumed on another disk: from the checkpoint in storage, the only one kept there
    assert done.checkpoint_blob and done.checkpoint_step == 600
    checkpoint = cluster.storage.stub().DownloadBlob(
        storage_pb2.DownloadBlobRequest(tenant="lab-a", sha256=done.checkpoint_blob)
    )
    assert sum(len(c.data) for c in checkpoint) > 0
    restored = [
        line
        for log in cluster.logs.glob("trainer-*.log")
        for line in log.read_text().splitlines()
        if "checkpoint restored from storage" in line and job_id in line
    ]
    assert restored and f'"step": {requeued.checkpoint_step}' in restored[0]


def test_a_scheduler_killed_mid_load_loses_no_job(cluster: Cluster) -> None:
    stub = cluster.stub()
    submitted = [
        (tenant, submit(stub, tenant, spec(steps=40)))
        for _ in range(5)
        for tenant in ("lab-a", "lab-b")
    ]
    wait_for(
        "some jobs to run",
        lambda: sum(get(stub, t, j).state == S.JOB_STATE_RUNNING for t, j in submitted) >= 2,
    )
    cluster.scheduler.kill()
    time.sleep(2)  # jobs keep training and finishing while no scheduler runs
    cluster.start_scheduler()
    stub = cluster.stub()
    ended = [
        wait_state(stub, t, j, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED,
                   timeout=240)
        for t, j in submitted
    ]  # fmt: skip
    assert [e.state for e in ended] == [S.JOB_STATE_SUCCEEDED] * len(submitted), [
        e.reason for e in ended
    ]
    assert all(e.progress.step == 40 for e in ended)
