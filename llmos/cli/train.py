"""`llmos train`: submit a training job and follow it with a live progress bar (step,
loss, validation loss, tokens/s, ETA), then a summary. `--detach` only submits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from google.protobuf.struct_pb2 import Struct

from llmos.cli.connection import connection
from llmos.cli.errors import EXIT_FAILED, CommandError
from llmos.cluster_view import state_of
from llmos.priority import PriorityClass
from llmos.v1 import common_pb2, scheduler_pb2

BAR = 30
Schedule = Literal["cosine", "linear", "constant"]


def training_config(
    *, steps: int = 100, batch_size: int = 8, seq_len: int = 64, lr: float = 1e-3,
    schedule: Schedule = "cosine", warmup: int = 10, seed: int = 0, checkpoint_every: int = 50,
    eval_every: int = 25, grad_accum: int = 1, dataset: str | None = None,
    text: str | None = None, base_model: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The job's `spec.config` (checked by the scheduler at submit)."""
    config: dict[str, Any] = {
        "steps": steps, "batch_size": batch_size, "seq_len": seq_len, "learning_rate": lr,
        "schedule": schedule, "warmup_steps": warmup, "seed": seed,
        "checkpoint_every": checkpoint_every, "eval_every": eval_every, "grad_accum": grad_accum,
    }  # fmt: skip
    optional = {"dataset": dataset, "text": text, "base_model": base_model}
    config.update({key: value for key, value in optional.items() if value})
    return config


def progress_line(job: scheduler_pb2.Job) -> str:
    """The live line: a bar, step, loss, validation loss, throughput, ETA, state."""
    p = job.progress
    if not p.total_steps:
        return f"{job.job_id} {state_of(job)}: {job.reason}"
    done = int(BAR * p.step / p.total_steps)
    val = f" val {p.val_loss:.3f}" if p.val_loss else ""
    return (
        f"[{'#' * done}{'.' * (BAR - done)}] step {p.step}/{p.total_steps} loss {p.loss:.3f}"
        f"{val} {p.tokens_per_s:.0f} tok/s ETA {p.eta_s:.0f}s {state_of(job)}"
    )


def _opt(help_text: str) -> Any:
    return typer.Option(help=help_text)


def train(
    ctx: typer.Context,
    name: Annotated[str, _opt("the job's name (and the default output model)")],
    dataset: Annotated[str | None, _opt("a dataset of your tenant (llmos datasets upload)")] = None,
    text_file: Annotated[Path | None, _opt("a local text file sent with the job")] = None,
    base_model: Annotated[str | None, _opt("fine-tune this model (default: from scratch)")] = None,
    steps: Annotated[int, _opt("optimizer steps")] = 100,
    batch_size: Annotated[int, _opt("sequences per process per step")] = 8,
    seq_len: Annotated[int, _opt("tokens per sequence")] = 64,
    lr: Annotated[float, _opt("peak learning rate")] = 1e-3,
    schedule: Annotated[Schedule, _opt("learning-rate decay after warmup")] = "cosine",
    warmup: Annotated[int, _opt("warmup steps")] = 10,
    grad_accum: Annotated[int, _opt("micro-batches accumulated per step")] = 1,
    seed: Annotated[int, _opt("seed for data order and initialisation")] = 0,
    checkpoint_every: Annotated[int, _opt("steps between checkpoints")] = 50,
    eval_every: Annotated[int, _opt("steps between validation losses")] = 25,
    processes: Annotated[int, _opt("DDP processes")] = 1,
    cpus: Annotated[int, _opt("CPU cores per process")] = 1,
    memory_mib: Annotated[int, _opt("memory per process, MiB")] = 1024,
    priority: Annotated[str, _opt("critical, high, normal or batch")] = "normal",
    detach: Annotated[
        bool, typer.Option("--detach", help="submit, print the job id and return")
    ] = False,
) -> None:
    """Submit a training job and follow its progress (exit status 1 unless it succeeds)."""
    if (dataset is None) == (text_file is None):
        raise CommandError("give exactly one of --dataset NAME and --text-file FILE")
    config = Struct()
    config.update(
        training_config(
            steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, schedule=schedule,
            warmup=warmup, seed=seed, checkpoint_every=checkpoint_every, eval_every=eval_every,
            grad_accum=grad_accum, dataset=dataset, base_model=base_model,
            text=text_file.read_text(encoding="utf-8") if text_file else None,
        )
    )  # fmt: skip
    spec = scheduler_pb2.JobSpec(
        name=name,
        kind="training",
        priority=PriorityClass.parse(priority, "--priority").value,  # type: ignore[arg-type]
        resources=common_pb2.Resources(
            processes=processes, cpu_millicores=cpus * 1000, memory_bytes=memory_mib << 20
        ),
        config=config,
    )
    conn = connection(ctx)
    stub = conn.gateway_stub()
    job = stub.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec), timeout=conn.timeout)
    print(f"submitted {job.job_id}", file=sys.stderr)
    if detach:
        print(job.job_id)
        return
    last = job
    evaluations: list[float] = []
    for last in stub.WatchJob(scheduler_pb2.GetJobRequest(job_id=job.job_id)):
        print("\r" + progress_line(last).ljust(100), end="", file=sys.stderr, flush=True)
        val = last.progress.val_loss
        if val and (not evaluations or evaluations[-1] != val):
            evaluations.append(val)
    print(file=sys.stderr)
    p = last.progress
    print(f"{last.job_id} {state_of(last)}: {last.reason}")
    print(f"steps {p.step}/{p.total_steps}, loss {p.loss:.4f}, validation loss "
          f"{p.val_loss:.4f}, checkpoint at step {last.checkpoint_step}, "
          f"attempts {last.attempt}")  # fmt: skip
    if len(evaluations) > 1:
        print("validation loss: " + " -> ".join(f"{v:.3f}" for v in evaluations))
    if last.state != common_pb2.JobState.JOB_STATE_SUCCEEDED:
        raise typer.Exit(EXIT_FAILED)
