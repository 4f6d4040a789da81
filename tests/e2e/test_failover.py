"""Placement and failure, end to end: priorities order the queue; a worker that dies
before streaming gives its work to another; one that dies mid-stream ends the answer
with UNAVAILABLE; a scheduler killed with queued generations loses none of them; a
killed service is restarted and announced; and SIGTERM to `make run`, after a worker
was killed, leaves no process of LLM OS behind.

The stack runs through `make run`, as a user starts it. Its own worker takes 2
generations at a time (LLMOS_MAX_INFLIGHT=2) so that work queues in the scheduler; extra
workers serve a copy of the model under another name so the test decides which worker
can take what."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from llmos import processes
from llmos.ports import port_open
from llmos.services import REQUIRED_SERVICES
from llmos.v1 import (
    common_pb2,
    events_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    scheduler_pb2,
)
from tests.e2e.conftest import RunningStack, running_stack
from tools.harness import ROOT, Process, eventually, python_env, start_service

pytestmark = pytest.mark.e2e

COPY = "smollm2-copy"
SPARE = "smollm2-spare"


#: ready-line fields that name files, not addresses
LOCAL = ("data_dir", "logs", "credentials", "tls_ca", "metrics")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_folder: Path) -> Iterator[RunningStack]:
    with running_stack(
        tmp_path_factory,
        model_folder,
        via_make=True,
        LLMOS_MAX_INFLIGHT="2",
        LLMOS_HEARTBEAT_S="0.5",
        # a replacement worker may take longer than the default 30 s to start on a busy
        # machine; work for its model must wait for it, not expire (tested in unit tests)
        LLMOS_UNSERVED_TIMEOUT_S="180",
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


def _start_worker(stack: RunningStack, models: Path, name: str) -> Process:
    """One more inference worker on the stack's NATS and Redis, serving COPY."""
    nats_url = stack.fields["nats"]  # its own NATS and Redis users are read from
    redis_url = stack.fields["redis"]  # <data dir>/secrets
    env = python_env(
        LLMOS_DATA_DIR=str(stack.data_dir),
        LLMOS_NATS_URL=nats_url,
        LLMOS_REDIS_URL=redis_url,
        LLMOS_MODELS=COPY,
        LLMOS_MODELS_DIR=str(models),
        LLMOS_MAX_CONTEXT="512",
        LLMOS_HEARTBEAT_S="0.5",
        PYTHONPATH=str(ROOT),
    )
    return start_service(
        "services.inference_worker", env, stack.data_dir / "logs" / f"extra-{name}", timeout=180
    )


def _cluster(stack: RunningStack) -> scheduler_pb2.ClusterStatus:
    with stack.channel() as channel:
        status: scheduler_pb2.ClusterStatus = gateway_pb2_grpc.GatewayStub(
            channel
        ).GetClusterStatus(scheduler_pb2.GetClusterStatusRequest(), timeout=10)
        return status


def _instance_of(stack: RunningStack, pid: int, timeout_s: float = 120) -> str:
    """The instance id of the worker process `pid`, once the scheduler knows it serves."""
    return eventually(
        lambda: next(
            (
                w.instance.instance_id
                for w in _cluster(stack).workers
                if w.instance.pid == pid and w.loaded_models
            ),
            None,
        ),
        timeout_s,
        what=f"the scheduler to know worker {pid}",
        interval=0.5,
    )


def _queued(stack: RunningStack, count: int) -> None:
    eventually(
        lambda: _cluster(stack).queued_requests >= count,
        30,
        what=f"{count} generations queued",
        interval=0.1,
    )


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
        _queued(stack, 2)
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
    second: Process | None = None
    try:
        _instance_of(stack, first.pid)
        first.signal(signal.SIGSTOP)  # takes work, never answers, stops heartbeating
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(_generate, stack, COPY, 6, 0, f"request {i}:") for i in range(3)]
            time.sleep(2.0)  # the three are leased to the frozen worker, or queued
            second = _start_worker(stack, copy_models, "second")
            _instance_of(stack, second.pid)
            # the first worker stays frozen throughout: only the second can answer
            texts = [future.result(timeout=300) for future in futures]
        assert len(texts) == 3 and all(texts)
    finally:
        first.kill()
        if second is not None:
            second.stop(60)


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
                        worker.kill()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "lost after the answer had started streaming; retry" in (
            caught.value.details() or ""
        )
    finally:
        worker.kill()


def test_a_scheduler_killed_with_queued_generations_loses_none(stack: RunningStack) -> None:
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_generate, stack, "", 24, 0, f"job {i}:") for i in range(6)]
        _queued(stack, 2)
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
        worker.stop(60)


def _tritonserver_of(worker_pid: int) -> int:
    """The tritonserver process a worker runs."""
    (server,) = [
        pid for pid in processes.descendants(worker_pid)
        if (argv := processes.cmdline(pid)) and argv[0].endswith("/tritonserver")
    ]  # fmt: skip
    return server


def test_kill_9_of_tritonserver_under_load_ends_or_serves_every_request(
    stack: RunningStack,
) -> None:
    """kill -9 of the worker's tritonserver while generations stream and more wait: each
    request either completes or ends UNAVAILABLE with a sentence, none hangs, the worker
    restarts Triton, and the requests that were waiting are served by the new one."""
    worker = int(_instance(stack, "inference-worker")["pid"])
    server = _tritonserver_of(worker)
    outcomes: list[str] = []

    def run(index: int) -> str:
        try:
            _generate(stack, "", 32, 0, f"under load {index}:")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            sentence = exc.details() or ""
            assert "inference server" in sentence and len(sentence.split()) >= 5, sentence
            return "unavailable"
        return "completed"

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(run, index) for index in range(6)]
        _queued(stack, 2)  # two stream on the worker (LLMOS_MAX_INFLIGHT=2), four wait
        os.kill(server, signal.SIGKILL)
        outcomes = [future.result(timeout=300) for future in futures]  # none hangs
    assert len(outcomes) == 6
    # the four that waited in the scheduler were served by the restarted Triton
    assert outcomes.count("completed") >= 4, outcomes
    assert _tritonserver_of(worker) != server  # the same worker, a new server
    assert _generate(stack, "", 4, prompt="After the restart:")


def _instance(stack: RunningStack, service: str) -> dict[str, str]:
    (instance,) = [
        s["instance"] for s in stack.status()["services"]
        if s["instance"]["service"] == service and s["state"] == "STATE_SERVING"
    ]  # fmt: skip
    return dict(instance)


def test_a_killed_service_is_restarted_and_announced(stack: RunningStack) -> None:
    """kill -9 of the scheduler: the supervisor restarts it and subscribers see it come back."""
    scheduler = _instance(stack, "scheduler")
    with stack.channel() as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        events = stub.SubscribeEvents(
            gateway_pb2.SubscribeEventsRequest(kinds=["service"]), timeout=60
        )
        time.sleep(0.5)  # let the subscription reach NATS before the crash
        os.kill(int(scheduler["pid"]), signal.SIGKILL)
        for event in events:
            lifecycle = event.service_lifecycle
            if (
                lifecycle.phase == events_pb2.ServiceLifecycle.PHASE_STARTED
                and lifecycle.instance.service == "scheduler"
            ):
                assert lifecycle.instance.instance_id != scheduler["instance_id"]
                break
        events.cancel()
    eventually(lambda: stack.status().get("ready"), 30, what="the stack ready again")


def _footprint(root: int) -> tuple[dict[int, list[str]], set[Path]]:
    """Every process below `root` (pid -> its command line) and the model folders its
    Triton stubs run from."""
    tree = {pid: processes.cmdline(pid) for pid in processes.descendants(root)}
    folders = {
        Path(argv[1]).parents[1]
        for argv in tree.values()
        if len(argv) > 1 and argv[0].endswith("triton_python_backend_stub")
    }
    return tree, folders


def test_sigterm_to_make_run_after_a_worker_was_killed_leaves_nothing_behind(
    stack: RunningStack,
) -> None:
    """Runs last: it stops the module's stack. A worker killed with kill -9 leaves its
    Triton's stubs orphaned (they ignore SIGTERM); the launcher ends them when it
    restarts the worker. Then SIGTERM to make: every process the stack ever ran is gone,
    every port closed, Triton's directories deleted."""
    tree, folders = _footprint(stack.launcher.pid)
    worker = _instance(stack, "inference-worker")
    assert any("triton_python_backend_stub" in " ".join(argv) for argv in tree.values())
    os.kill(int(worker["pid"]), signal.SIGKILL)
    eventually(
        lambda: _instance(stack, "inference-worker")["pid"] != worker["pid"],
        180,
        what="the worker restarted",
        interval=0.5,
        ignoring=(ValueError, KeyError),
    )
    eventually(lambda: stack.status().get("ready"), 60, what="the stack ready again")
    restarted_tree, restarted_folders = _footprint(stack.launcher.pid)
    tree.update(restarted_tree)
    folders |= restarted_folders
    serving = [s for s in stack.status()["services"] if s["state"] == "STATE_SERVING"]
    assert sorted(s["instance"]["service"] for s in serving) == sorted(REQUIRED_SERVICES)
    directories = [
        Path(tempfile.gettempdir()) / f"llmos-{s['instance']['instance_id'].rsplit('-', 1)[-1]}"
        for s in serving
        if s["instance"]["service"] == "inference-worker"
    ]
    assert all(d.is_dir() for d in directories)
    scraped = json.loads(Path(stack.fields["metrics"]).read_text())  # the /metrics ports
    addresses = {key: address for key, address in stack.fields.items() if key not in LOCAL}
    addresses |= {f"{g['labels']['service']} metrics": g["targets"][0] for g in scraped}

    stack.launcher.terminate()  # SIGTERM to make, as a user's `kill` would send it
    said = "".join(stack.output)
    assert "LLM OS stopped" in said and "LLM OS failed" not in said
    left = {
        pid: argv for pid, argv in tree.items()
        if processes.alive(pid) and processes.cmdline(pid) == argv
    }  # fmt: skip
    assert left == {}, "processes of the stack survived it"
    for key, address in addresses.items():
        host, port = address.split("://")[-1].split("/")[0].rsplit(":", 1)
        assert not port_open(host, int(port)), f"{key} still listening on {address}"
    assert [d for d in directories if d.exists()] == []
    assert folders and [f for f in folders if f.exists()] == []
    assert not (stack.data_dir / "stack.json").exists()
