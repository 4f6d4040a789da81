"""The training program itself, as the trainer runs it: it learns, it resumes exactly from
a checkpoint (after a requested stop or a kill -9), and two DDP processes under torchrun
train like one process with the same global batch."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmos.config import environment_without_llmos
from llmos.model.names import CHECKPOINT
from llmos.ports import free_port
from tests.conftest import ROOT
from tests.corpus import TEXT


def job_dir(tmp_path: Path, name: str, **config: Any) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    settings = {"steps": 40, "batch_size": 4, "seq_len": 32, "checkpoint_every": 5,
                "eval_every": 10, "warmup_steps": 5, "text": TEXT, **config}  # fmt: skip
    (directory / "job.json").write_text(
        json.dumps({"job_id": name, "config": settings, "checkpoint_dir": str(directory / "ck")})
    )
    return directory


def start(directory: Path, *launcher: str) -> subprocess.Popen[str]:
    command = [*launcher, "-m", "services.trainer.program", str(directory)]
    return subprocess.Popen(
        [sys.executable, *command] if not launcher else command,
        cwd=ROOT,
        # TMPDIR: torchrun's own temporary files go with the test's directory
        env={**environment_without_llmos(), "OMP_NUM_THREADS": "1", "TMPDIR": str(directory)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def events(lines: list[str], kind: str) -> list[dict[str, Any]]:
    said = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in said if e["event"] == kind]


def losses(lines: list[str]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events(lines, "progress")}


def run(directory: Path, *launcher: str) -> tuple[int, list[str]]:
    proc = start(directory, *launcher)
    out, _ = proc.communicate(timeout=240)
    return proc.returncode, out.splitlines()


def run_until(directory: Path, step: int, then: Any) -> tuple[int, list[str]]:
    """Run, and once `step` is reported call `then(process)`; read to the end."""
    proc = start(directory)
    lines: list[str] = []
    assert proc.stdout is not None
    acted = False
    for line in proc.stdout:
        lines.append(line)
        if not acted and losses([line]).get(step) is not None:
            then(proc)
            acted = True
    return proc.wait(60), lines


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    code, lines = run(job_dir(tmp_path_factory.mktemp("plain"), "plain"))
    assert code == 0, lines[-3:]
    return losses(lines)


def test_the_model_learns_and_ends_with_a_checkpoint(
    uninterrupted: dict[int, float], tmp_path: Path
) -> None:
    assert sorted(uninterrupted) == list(range(1, 41))
    first, last = uninterrupted[1], uninterrupted[40]
    assert last < first - 1.0  # byte-level loss starts near ln(256) = 5.5 and falls


def test_a_stopped_job_resumes_with_exactly_the_same_losses(
    uninterrupted: dict[int, float], tmp_path: Path
) -> None:
    directory = job_dir(tmp_path, "stopped")
    code, lines = run_until(directory, 12, lambda p: (directory / "control").write_text("preempt"))
    assert code == 3
    stopped = events(lines, "stopped")[0]
    assert stopped["action"] == "preempt" and stopped["checkpoint_step"] == stopped["step"] >= 12
    (directory / "control").unlink()
    code, lines = run(directory)
    assert code == 0
    resumed = events(lines, "resumed")[0]["step"]
    assert resumed == stopped["step"]
    after = losses(lines)
    assert sorted(after) == list(range(resumed + 1, 41))
    assert after == {s: uninterrupted[s] for s in after}  # exact, not approximate


def test_a_killed_job_resumes_from_its_last_checkpoint_with_the_same_losses(
    uninterrupted: dict[int, float], tmp_path: Path
) -> None:
    directory = job_dir(tmp_path, "killed")
    code, _ = run_until(directory, 13, lambda p: os.kill(p.pid, signal.SIGKILL))
    assert code == -signal.SIGKILL
    code, lines = run(directory)
    assert code == 0
    resumed = events(lines, "resumed")[0]["step"]
    assert resumed in (10, 15)  # checkpoint_every=5; the kill came after step 13
    after = losses(lines)
    assert after == {s: uninterrupted[s] for s in range(resumed + 1, 41)}


def test_a_job_killed_after_its_last_checkpoint_finishes_on_resume(tmp_path: Path) -> None:
    """A crash between the final checkpoint and the result (the trainer's host lost at
    the very end) must not fail the job: resumed at its last step, it has nothing left to
    train and writes its result."""
    directory = job_dir(tmp_path, "at-the-end", steps=10)
    job = json.loads((directory / "job.json").read_text())
    job["output_dir"] = str(directory / "result")
    (directory / "job.json").write_text(json.dumps(job))
    proc = start(directory)
    assert proc.stdout is not None
    for line in proc.stdout:  # killed once the checkpoint of the last step is written
        if events([line], "checkpoint") and events([line], "checkpoint")[0]["step"] == 10:
            os.kill(proc.pid, signal.SIGKILL)
            break
    assert proc.wait(60) in (-signal.SIGKILL, 0)  # or it got to the end first
    shutil.rmtree(directory / "result", ignore_errors=True)
    code, lines = run(directory)
    assert code == 0, lines[-3:]
    assert events(lines, "resumed")[0]["step"] == 10 and not losses(lines)
    done = events(lines, "done")[0]
    assert done["step"] == 10 and math.isfinite(done["val_loss"]) and done["val_loss"] > 0
    assert (directory / "result" / "config.json").is_file()


def test_a_nan_loss_fails_the_job_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from services.trainer import program

    calls = {"n": 0}
    real_loss = program.loss_of

    def diverging(model: Any, rows: Any) -> Any:  # step 7 blows up
        calls["n"] += 1
        loss = real_loss(model, rows)
        return loss * torch.tensor(float("nan")) if calls["n"] == 7 else loss

    monkeypatch.setattr(program, "loss_of", diverging)
    directory = job_dir(tmp_path, "nan", steps=20, eval_every=100)
    threads = torch.get_num_threads()
    try:
        assert program.train(directory) == program.EXIT_FAILED
    finally:
        torch.set_num_threads(threads)
    failed = events(capsys.readouterr().out.splitlines(), "failed")
    assert failed[0]["reason"] == (
        "the loss became nan at step 7; the last good checkpoint is step 5"
    )
    from services.trainer import checkpoint_file

    assert checkpoint_file.read(directory / "ck" / CHECKPOINT).step == 5


class _WritesAMarker:
    """A pickle whose loading would run code: it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_a_pickled_checkpoint_is_refused_and_never_unpickled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint blob from storage is restored where the program resumes from: one that
    is a pickle (torch.save's format) must fail the job, never run on the trainer."""
    import torch

    from services.trainer import program

    directory = job_dir(tmp_path, "pickled", steps=10)
    marker = tmp_path / "code-ran"
    (directory / "ck").mkdir()
    torch.save({"step": 5, "model": _WritesAMarker(marker)}, directory / "ck" / CHECKPOINT)
    threads = torch.get_num_threads()
    try:
        assert program.main([str(directory)]) == program.EXIT_FAILED
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    (failed,) = events(lines, "failed")
    assert failed["reason"] == (
        f"{CHECKPOINT} is not a safetensors checkpoint (a pickle or another format); "
        "it is refused unread, never unpickled"
    )
    assert not marker.exists()
    assert not events(lines, "progress")  # nothing trained on top of it either


def test_two_ddp_processes_train_like_one_with_the_same_global_batch(
    uninterrupted: dict[int, float], tmp_path: Path
) -> None:
    directory = job_dir(tmp_path, "ddp", batch_size=2, steps=10)
    single = job_dir(tmp_path, "single", batch_size=4, steps=10)
    code, lines = run(
        directory,
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}",
    )  # fmt: skip
    assert code == 0, lines[-3:]
    code, single_lines = run(single)
    assert code == 0
    ddp, one = losses(lines), losses(single_lines)
    assert sorted(ddp) == sorted(one) == list(range(1, 11))
    for step in ddp:
        assert ddp[step] == pytest.approx(one[step], rel=1e-4, abs=1e-4)


def test_lora_trains_only_low_rank_updates_and_merges_them_into_the_weights(
    tmp_path: Path,
) -> None:
    import torch
    from safetensors.torch import load_file

    from llmos.model.llama import LlamaConfig, LlamaForCausalLM
    from llmos.training import TrainingConfig

    directory = job_dir(tmp_path, "lora", steps=30, method="lora", lora_rank=4,
                        learning_rate=1e-2)  # fmt: skip
    spec = json.loads((directory / "job.json").read_text())
    spec["output_dir"] = str(directory / "out")
    (directory / "job.json").write_text(json.dumps(spec))
    code, lines = run(directory)
    assert code == 0, lines[-3:]
    config = TrainingConfig.parse(spec["config"], "config")
    shape = config.model_shape()
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    trainable = events(lines, "lora")[0]["trainable_parameters"]
    assert trainable == layers * 4 * 4 * (hidden + hidden)  # 4 projections, rank 4
    progress = losses(lines)
    assert progress[30] < progress[1]
    torch.manual_seed(config.seed)  # the initial weights, as the program built them
    initial = LlamaForCausalLM(LlamaConfig.from_hf(dict(shape))).state_dict()
    merged = load_file(str(directory / "out" / "model.safetensors"))
    assert not any("lora" in key or ".base." in key for key in merged)
    for key, value in merged.items():
        if any(f"{name}.weight" in key for name in ("q_proj", "k_proj", "v_proj", "o_proj")):
            assert not torch.equal(value, initial[key]), key  # updated through LoRA
        else:
            assert torch.equal(value, initial[key]), key  # frozen
