"""`llmos train`: submit a training job and follow it with a live progress bar (step,
loss, validation loss, tokens/s, ETA), then a summary. `--detach` only submits."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from google.protobuf.struct_pb2 import Struct

from llmos.priority import PriorityClass
from llmos.v1 import common_pb2, scheduler_pb2

S = common_pb2.JobState
BAR = 30
END = (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED)


def training_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "learning_rate": args.lr,
        "schedule": args.schedule,
        "warmup_steps": args.warmup,
        "seed": args.seed,
        "checkpoint_every": args.checkpoint_every,
        "eval_every": args.eval_every,
        "grad_accum": args.grad_accum,
    }
    if args.dataset:
        config["dataset"] = args.dataset
    if args.text_file:
        config["text"] = open(args.text_file, encoding="utf-8").read()  # noqa: SIM115
    if args.base_model:
        config["base_model"] = args.base_model
    return config


def progress_line(job: scheduler_pb2.Job) -> str:
    p = job.progress
    state = S.Name(job.state).removeprefix("JOB_STATE_")
    if not p.total_steps:
        return f"{job.job_id} {state}: {job.reason}"
    done = int(BAR * p.step / p.total_steps)
    val = f" val {p.val_loss:.3f}" if p.val_loss else ""
    return (
        f"[{'#' * done}{'.' * (BAR - done)}] step {p.step}/{p.total_steps} loss {p.loss:.3f}"
        f"{val} {p.tokens_per_s:.0f} tok/s ETA {p.eta_s:.0f}s {state}"
    )


def cmd_train(args: argparse.Namespace) -> int:
    stub, t = args.gateway_stub(args), args.timeout
    config = Struct()
    config.update(training_config(args))
    spec = scheduler_pb2.JobSpec(
        name=args.name,
        kind="training",
        priority=PriorityClass.parse(args.priority, "--priority").value,  # type: ignore[arg-type]
        resources=common_pb2.Resources(
            processes=args.processes,
            cpu_millicores=args.cpus * 1000,
            memory_bytes=args.memory_mib << 20,
        ),
        config=config,
    )
    job = stub.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec), timeout=t)
    print(f"submitted {job.job_id}", file=sys.stderr)
    if args.detach:
        print(job.job_id)
        return 0
    last = job
    evaluations: list[float] = []
    for last in stub.WatchJob(scheduler_pb2.GetJobRequest(job_id=job.job_id)):
        print("\r" + progress_line(last).ljust(100), end="", file=sys.stderr, flush=True)
        val = last.progress.val_loss
        if val and (not evaluations or evaluations[-1] != val):
            evaluations.append(val)
    print(file=sys.stderr)
    p = last.progress
    state = S.Name(last.state).removeprefix("JOB_STATE_")
    print(f"{last.job_id} {state}: {last.reason}")
    print(f"steps {p.step}/{p.total_steps}, loss {p.loss:.4f}, validation loss "
          f"{p.val_loss:.4f}, checkpoint at step {last.checkpoint_step}, "
          f"attempts {last.attempt}")  # fmt: skip
    if len(evaluations) > 1:
        print("validation loss: " + " -> ".join(f"{v:.3f}" for v in evaluations))
    return 0 if last.state == S.JOB_STATE_SUCCEEDED else 1


def add_command(commands: Any) -> None:
    train = commands.add_parser("train", help="submit a training job and follow its progress")
    train.add_argument("--name", required=True)
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a dataset of your tenant (llmos datasets upload)")
    source.add_argument("--text-file", help="a local text file sent with the job")
    train.add_argument("--base-model", help="fine-tune this model (default: from scratch)")
    train.add_argument("--steps", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--seq-len", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--schedule", default="cosine", choices=("cosine", "linear", "constant"))
    train.add_argument("--warmup", type=int, default=10)
    train.add_argument("--grad-accum", type=int, default=1)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=50)
    train.add_argument("--eval-every", type=int, default=25)
    train.add_argument("--processes", type=int, default=1, help="DDP processes")
    train.add_argument("--cpus", type=int, default=1, help="CPU cores per process")
    train.add_argument("--memory-mib", type=int, default=1024, help="memory per process")
    train.add_argument("--priority", default="normal")
    train.add_argument("--detach", action="store_true", help="submit and print the job id")
    train.set_defaults(run=cmd_train)
