"""Placement and failure, end to end: priorities order the queue; a worker that dies
before streaming gives its work to another; one that dies mid-stream ends the answer
with UNAVAILABLE; a scheduler killed with queued generations loses none of them.

The stack's own worker takes 2 generations at a time (LLMOS_MAX_INFLIGHT=2) so that
work queues in the scheduler; extra workers serve a copy of the model under another
name so the test decides which worker can take what."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from llmos.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, inference_pb2, scheduler_pb2
from tests.conftest import ROOT
from tests.e2e.conftest import RunningStack, running_stack

pytestmark = pytest.mark.e2e

COPY = "smollm2-copy"
SPARE = "smollm2-spare"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_folder: Path) -> Iterator[RunningStack]:
    with running_stack(
        tmp_path_factory, model_folder, LLMOS_MAX_INFLIGHT="2", LLMOS_HEARTBEAT_S="0.5"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def copy_models(tmp_path_factory: pytest.TempPathFactory, model_folder: Path) -> Path:
    """Two names for the default model's weights; extra workers load COPY at start and
    can load SPARE when asked."""
    models = tmp_path_factory.mktemp("copy-models")
    for name in (COPY, SPARE):
        (models / name).symlink_to(model_folder, target_is_directory=True)
    return models


def _start_worker(stack: RunningStack, models: Path, name: str) -> subprocess.Popen[bytes]:
    secrets = stack.data_dir / "secrets"
    nats_url = stack.fields["nats"].replace(
        "nats://", f"nats://{(secrets / 'nats.token').read_text().strip()}@"
    )
    redis_url = stack.fields["redis"].replace(
        "redis://", f"redis://:{(secrets / 'redis.password').read_text().strip()}@"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env.update(
        LLMOS_DATA_DIR=str(stack.data_dir),
        LLMOS_NATS_URL=nats_url,
        LLMOS_REDIS_URL=redis_url,
        LLMOS_LISTEN_ADDR="127.0.0.1:0",
        LLMOS_MODELS=COPY,
        LLMOS_MODELS_DIR=str(models),
        LLMOS_MAX_CONTEXT="512",
        LLMOS_HEARTBEAT_S="0.5",
        PYTHONPATH=str(ROOT),
    )
    log_path = stack.data_dir / "logs" / f"extra-worker-{name}.log"
    with log_path.open("ab") as log:  # no preexec_fn: this test process has threads
        return subprocess.Popen(
            [sys.executable, "-m", "services.inference_worker"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )


def _cluster(stack: RunningStack) -> scheduler_pb2.ClusterStatus:
    with stack.channel() as channel:
        status: scheduler_pb2.ClusterStatus = gateway_pb2_grpc.GatewayStub(
            channel
        ).GetClusterStatus(scheduler_pb2.GetClusterStatusRequest(), timeout=10)
        return status


def _instance_of(stack: RunningStack, pid: int, timeout_s: float = 120) -> str:
    """The instance id of the worker process `pid`, once it serves its model."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in _cluster(stack).workers:
            if worker.instance.pid == pid and worker.loaded_models:
                return worker.instance.instance_id
        time.sleep(0.5)
    raise AssertionError(f"worker {pid} did not start serving within {timeout_s:g}s")


def _generate(
    stack: RunningStack, model: str, max_tokens: int, priority: int = 0, prompt: str = "Count:"
) -> str:
    """The text of one sampled generation of exactly `max_tokens` tokens."""
    with stack.channel() as channel:
        stream = gateway_pb2_grpc.GatewayStub(channel).Generate(
            gateway_pb2.GenerateRequest(
                model=model,
                prompt=prompt,
                priority=priority,  # type: ignore[arg-type]
                params=inference_pb2.GenerationParams(
                    max_tokens=max_tokens, ignore_eos=True, temperature=0.7
                ),
            ),
            timeout=300,
        )
        responses = list(stream)
    assert responses[-1].done and responses[-1].usage.completion_tokens == max_tokens
    return "".join(r.text for r in responses)


def test_higher_priority_generations_go_first(stack: RunningStack) -> None:
    """Two slots, busy with batch work; the critical request overtakes the queued batch."""
    finished: list[str] = []
    lock = threading.Lock()

    def run(label: str, priority: int, max_tokens: int) -> None:
        _generate(stack, "", max_tokens, priority, prompt=f"{label}:")
        with lock:
            finished.append(label)

    batch = common_pb2.PRIORITY_BATCH
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(run, f"batch-{i}", batch, 40) for i in range(4)]
        deadline = time.monotonic() + 30
        while _cluster(stack).queued_requests < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _cluster(stack).queued_requests == 2  # two run, two wait
        futures.append(pool.submit(run, "critical", common_pb2.PRIORITY_CRITICAL, 4))
        for future in futures:
            future.result(timeout=300)
    # Two batch requests ran and two waited when the critical one arrived. It took the
    # first free slot and, being short, finished before both waiting ones; in arrival
    # order it would have started only after one of them had finished (index >= 3).
    assert finished.index("critical") <= 2, finished


def test_a_worker_lost_before_streaming_hands_its_work_to_another(
    stack: RunningStack, copy_models: Path
) -> None:
    first = _start_worker(stack, copy_models, "first")
    second: subprocess.Popen[bytes] | None = None
    try:
        _instance_of(stack, first.pid)
        os.kill(first.pid, signal.SIGSTOP)  # takes work, never answers, stops heartbeating
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(_generate, stack, COPY, 6, 0, f"request {i}:") for i in range(3)]
            time.sleep(2.0)  # the three are leased to the frozen worker, or queued
            second = _start_worker(stack, copy_models, "second")
            _instance_of(stack, second.pid)
            # the first worker stays frozen throughout: only the second can answer
            texts = [future.result(timeout=300) for future in futures]
        assert len(texts) == 3 and all(texts)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        if second is not None:
            second.send_signal(signal.SIGTERM)
            second.wait(60)


def test_a_worker_lost_mid_stream_ends_the_answer_with_unavailable(
    stack: RunningStack, copy_models: Path
) -> None:
    worker = _start_worker(stack, copy_models, "doomed")
    try:
        _instance_of(stack, worker.pid)
        with stack.channel() as channel:
            stream = gateway_pb2_grpc.GatewayStub(channel).Generate(
                gateway_pb2.GenerateRequest(
                    model=COPY,
                    prompt="A long story:",
                    params=inference_pb2.GenerationParams(max_tokens=400, ignore_eos=True),
                ),
                timeout=120,
            )
            received = 0
            with pytest.raises(grpc.RpcError) as caught:
                for _ in stream:
                    received += 1
                    if received == 3:
                        os.kill(worker.pid, signal.SIGKILL)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "lost after the answer had started streaming; retry" in (
            caught.value.details() or ""
        )
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)


def test_a_scheduler_killed_with_queued_generations_loses_none(stack: RunningStack) -> None:
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_generate, stack, "", 24, 0, f"job {i}:") for i in range(6)]
        deadline = time.monotonic() + 30
        while _cluster(stack).queued_requests < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        status = stack.status()
        (scheduler,) = [
            s["instance"] for s in status["services"] if s["instance"]["service"] == "scheduler"
        ]
        os.kill(int(scheduler["pid"]), signal.SIGKILL)  # the launcher restarts it
        texts = [future.result(timeout=300) for future in futures]
    assert len(texts) == 6 and all(texts)


def test_a_model_no_worker_has_loaded_is_loaded_on_demand(
    stack: RunningStack, copy_models: Path
) -> None:
    worker = _start_worker(stack, copy_models, "loader")
    try:
        _instance_of(stack, worker.pid)
        assert not any(SPARE in w.loaded_models for w in _cluster(stack).workers)
        assert _generate(stack, SPARE, 4, prompt="Loaded on demand:")
        (serving,) = [w for w in _cluster(stack).workers if w.instance.pid == worker.pid]
        assert SPARE in serving.loaded_models
        with pytest.raises(grpc.RpcError) as caught:
            _generate(stack, "no-such-model", 4)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'no-such-model' is not available on any worker" in (caught.value.details() or "")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
