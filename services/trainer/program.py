"""The training loop of one job attempt: `python -m services.trainer.program JOB_DIR`.

Run by the trainer, alone or as one rank of `torchrun` (DDP: gloo on CPU, NCCL on GPU).
JOB_DIR/job.json says what to train and where checkpoints go; the trainer asks the
program to stop by writing JOB_DIR/control ("preempt", "cancel" or "abort"). Rank 0
reads it between steps and tells the other ranks, so every rank stops after the same step.

Exact resume: the batch of a step is a pure function of (seed, step) — the text packed
into fixed windows, visited in a seeded permutation per epoch — and a checkpoint holds the
model, AdamW, the learning-rate schedule, the step and the RNG states, so a run resumed
from step N computes the same losses as one that never stopped.

Rank 0 writes JSON lines on stdout for the trainer: {"event": "progress"|"checkpoint"|
"done"|"stopped"|"failed", ...}. Exit status: 0 done, 3 stopped on request, 1 failed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from llmos.model.llama import LlamaConfig, LlamaForCausalLM
from llmos.model.names import CHECKPOINT
from llmos.training import TrainingConfig
from services.trainer import checkpoint_file, lora
from services.trainer.checkpoint_file import Checkpoint

EXIT_DONE, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3


def say(event: str, **fields: Any) -> None:
    """One line for the trainer (rank 0 only)."""
    if rank() == 0:
        print(json.dumps({"event": event, **fields}), flush=True)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


class Corpus:
    """Token ids packed into windows of seq_len + 1; the held-out tail for validation."""

    def __init__(self, ids: list[int], config: TrainingConfig) -> None:
        tokens = torch.tensor(ids, dtype=torch.long)
        span = config.seq_len + 1
        split = int(len(tokens) * (1 - config.val_fraction))
        self.train = _windows(tokens[:split], span)
        self.val = _windows(tokens[split:], span)
        if len(self.train) == 0 or len(self.val) == 0:
            raise ValueError(
                f"the text gives {len(tokens)} tokens: too few for windows of "
                f"{config.seq_len} tokens in both the training and validation parts"
            )
        self.seed = config.seed

    def batch(self, sample: int, count: int) -> Tensor:
        """Windows number `sample`..`sample+count` of the endless, per-epoch-shuffled
        sequence of training windows."""
        n = len(self.train)
        rows = []
        for index in range(sample, sample + count):
            epoch, offset = divmod(index, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
            rows.append(self.train[int(order[offset])])
        return torch.stack(rows)


def _windows(tokens: Tensor, span: int) -> Tensor:
    count = len(tokens) // span
    return tokens[: count * span].view(count, span)


def lr_factor(config: TrainingConfig) -> Callable[[int], float]:
    """Warmup, then cosine or linear decay to zero (or constant)."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def build(
    config: TrainingConfig, base_model_dir: str
) -> tuple[LlamaForCausalLM, Callable[[str], list[int]]]:
    """The model to train and its tokenizer (bytes for a model trained from scratch);
    a base model is read from the folder the trainer fetched for this job's tenant."""
    torch.manual_seed(config.seed)
    if config.base_model:
        from llmos.model.folder import load_model
        from llmos.model.text import TextCodec

        if not base_model_dir:
            raise ValueError(f"the trainer did not fetch the base model {config.base_model!r}")
        folder = Path(base_model_dir)
        model = load_model(folder)
        if config.seq_len > model.config.max_position_embeddings:
            raise ValueError(
                f"seq_len {config.seq_len} is above the model's context of "
                f"{model.config.max_position_embeddings} tokens"
            )
        return model, TextCodec(folder).encode
    model = LlamaForCausalLM(LlamaConfig.from_hf(dict(config.model_shape())))
    return model, lambda text: list(text.encode("utf-8"))


def training_device() -> torch.device:
    """This rank's GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


#: set by `train`; batches and collective tensors go there
DEVICE = torch.device("cpu")


def loss_of(model: nn.Module, rows: Tensor) -> Tensor:
    """Next-token cross entropy; bf16 mixed precision on GPUs (CPUs here have no fast
    bf16, so they stay in fp32)."""
    rows = rows.to(DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda"):
        logits = model(rows[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))


@torch.no_grad()
def validation_loss(model: nn.Module, corpus: Corpus, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(corpus.val), batch_size):
        rows = corpus.val[start : start + batch_size]
        total += float(loss_of(model, rows)) * len(rows)
        count += len(rows)
    model.train()
    return total / count


class Stopper:
    """Whether the trainer asked this attempt to stop, agreed by every rank. A trainer
    that died (kill -9 leaves its children running) counts as "abort": its job is being
    handed to another trainer, which must not race this one for the checkpoint."""

    def __init__(self, control: Path, trainer_pid: int) -> None:
        self.control = control
        self.trainer_pid = trainer_pid

    def _trainer_gone(self) -> bool:
        if not self.trainer_pid:
            return False
        try:
            os.kill(self.trainer_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def requested(self) -> str:
        local = self.control.read_text().strip() if self.control.exists() else ""
        if not local and self._trainer_gone():
            local = "abort"
        if world() == 1:
            return local
        flag = torch.tensor([1 if local else 0], device=DEVICE)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # rank 0's file, or any node's
        if int(flag) and not local:
            return "preempt"
        return local


def save_checkpoint(
    path: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    samples: int,
) -> None:
    """Write atomically (rank 0): a crash mid-write leaves the previous checkpoint."""
    if rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        checkpoint_file.write(
            partial,
            Checkpoint(
                step=step,
                samples=samples,
                model=_unwrap(model).state_dict(),
                optimizer=optimizer.state_dict(),
                schedule=schedule.state_dict(),
                rng=torch.get_rng_state(),
            ),
        )
        partial.replace(path)
    if world() > 1:
        dist.barrier()
    say("checkpoint", step=step)


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def train(job_dir: Path) -> int:
    spec = json.loads((job_dir / "job.json").read_text())
    config = TrainingConfig.parse(spec["config"], "config")
    checkpoint = Path(spec["checkpoint_dir"]) / CHECKPOINT
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    global DEVICE
    DEVICE = training_device()
    model, encode = build(config, str(spec.get("base_model_dir", "")))
    model.to(DEVICE)
    text = config.text or Path(spec["text_file"]).read_text(encoding="utf-8", errors="replace")
    corpus = Corpus(encode(text), config)
    if config.method == "lora":
        trainable = lora.attach(model, config.lora_rank, config.lora_alpha)
        say("lora", trainable_parameters=trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    no_decay = [p for p in params if p.ndim < 2]
    decay = [p for p in params if p.ndim >= 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config))
    step = 0
    if checkpoint.exists():
        state = checkpoint_file.read(checkpoint)  # never unpickled: see checkpoint_file
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        schedule.load_state_dict(state.schedule)
        torch.set_rng_state(state.rng)
        step = state.step
        say("resumed", step=step)
    trained: nn.Module = model
    if world() > 1:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[DEVICE.index] if DEVICE.type == "cuda" else None
        )
    trained.train()
    stopper = Stopper(job_dir / "control", int(spec.get("trainer_pid", 0)))
    per_step = config.batch_size * config.grad_accum * world()
    started, tokens_done = time.monotonic(), 0
    last_checkpoint, val = step, 0.0
    total = math.nan  # the last step's training loss: unknown until a step runs here
    if step >= config.steps:  # resumed from the last step's checkpoint: only the result
        val = validation_loss(model, corpus, config.batch_size)  # is left, and its report
        total = val
    while step < config.steps:
        action = stopper.requested()
        if action:
            if action != "abort" and step > last_checkpoint:
                save_checkpoint(checkpoint, step, trained, optimizer, schedule, step * per_step)
                last_checkpoint = step
            say("stopped", action=action, step=step, checkpoint_step=last_checkpoint)
            return EXIT_STOPPED
        total = 0.0
        for micro in range(config.grad_accum):
            first = step * per_step + (micro * world() + rank()) * config.batch_size
            rows = corpus.batch(first, config.batch_size)
            loss = loss_of(trained, rows) / config.grad_accum
            loss.backward()  # type: ignore[no-untyped-call]
            total += float(loss.detach())
        if world() > 1:
            reduced = torch.tensor([total], device=DEVICE)
            dist.all_reduce(reduced)
            total = float(reduced) / world()
        if not math.isfinite(total):
            say(
                "failed",
                step=step,
                reason=f"the loss became {total} at step {step + 1}; "
                f"the last good checkpoint is step {last_checkpoint}",
            )
            return EXIT_FAILED
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        step += 1
        tokens_done += per_step * config.seq_len
        if step % config.eval_every == 0 or step == config.steps:
            val = validation_loss(model, corpus, config.batch_size)
        elapsed = time.monotonic() - started
        rate = tokens_done / elapsed if elapsed > 0 else 0.0
        say(
            "progress",
            step=step,
            total_steps=config.steps,
            loss=total,
            val_loss=val,
            tokens_per_s=rate,
            eta_s=(config.steps - step) * per_step * config.seq_len / rate if rate else 0.0,
        )
        if step % config.checkpoint_every == 0 or step == config.steps:
            save_checkpoint(checkpoint, step, trained, optimizer, schedule, step * per_step)
            last_checkpoint = step
    if config.method == "lora":
        lora.merge(model)
    if rank() == 0 and spec.get("output_dir"):
        write_result(model.to("cpu"), Path(spec["output_dir"]), str(spec.get("base_model_dir", "")))
    say("done", step=step, loss=total, val_loss=val)
    return EXIT_DONE


def write_result(model: LlamaForCausalLM, folder: Path, base_model_dir: str) -> None:
    """The trained weights as a Hugging Face folder (with the base model's tokenizer
    files when fine-tuning; a from-scratch model reads bytes and has none)."""
    from llmos.model.folder import save_model
    from llmos.model.names import GENERATION_CONFIG, TOKENIZER, TOKENIZER_CONFIG

    save_model(model, folder)
    if base_model_dir:
        for name in (TOKENIZER, TOKENIZER_CONFIG, GENERATION_CONFIG):
            source = Path(base_model_dir) / name
            if source.is_file():
                (folder / name).write_bytes(source.read_bytes())


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m services.trainer.program JOB_DIR", file=sys.stderr)
        return 2
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    try:
        return train(Path(argv[0]))
    except (ValueError, OSError, RuntimeError) as exc:
        say("failed", reason=str(exc))
        return EXIT_FAILED
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
