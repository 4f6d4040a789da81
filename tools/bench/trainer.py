"""`make bench-trainer`: the training program's throughput against a plain torch loop of the
same model, batch and steps, in the same run. Prints one JSON line:

  trainer_tokens_per_s      services.trainer.program (as the trainer runs it: progress
                            lines, stop checks, validation and checkpoints every 50 steps)
  plain_tokens_per_s        forward, backward, AdamW step and nothing else
  trainer_vs_plain_torch    the ratio (target >= 0.95)

Each side runs in its own fresh process, twice, alternating; the better run of each
counts (these machines are shared and noisy). Both use one thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llmos.config import environment_without_llmos

ROOT = Path(__file__).resolve().parents[2]
CONFIG: dict[str, Any] = {
    "steps": 100,
    "batch_size": 8,
    "seq_len": 128,
    "learning_rate": 1e-3,
    "warmup_steps": 10,
    "checkpoint_every": 50,
    "eval_every": 50,
    "model": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 8},
}  # fmt: skip


def plain_loop(config: dict[str, Any]) -> float:
    """The baseline: same model, same batches, AdamW; tokens per second."""
    import torch
    import torch.nn.functional as F

    from llmos.model.llama import LlamaConfig, LlamaForCausalLM
    from llmos.training import TrainingConfig
    from services.trainer.program import Corpus

    torch.set_num_threads(1)
    settings = TrainingConfig.parse({**config, "text": _text()}, "config")
    torch.manual_seed(settings.seed)
    model = LlamaForCausalLM(LlamaConfig.from_hf(dict(settings.model_shape())))
    corpus = Corpus(list(settings.text.encode()), settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    model.train()
    started = time.perf_counter()
    for step in range(settings.steps):
        rows = corpus.batch(step * settings.batch_size, settings.batch_size)
        logits = model(rows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - started
    return settings.steps * settings.batch_size * settings.seq_len / elapsed


def _text() -> str:
    return (ROOT / "README.md").read_text() * 4


def _trainer_run(config: dict[str, Any]) -> float:
    with tempfile.TemporaryDirectory(prefix="llmos-bench-trainer-") as directory:
        job = Path(directory)
        spec = {"config": {**config, "text": _text()}, "checkpoint_dir": str(job / "ck")}
        (job / "job.json").write_text(json.dumps(spec))
        out = subprocess.run(
            [sys.executable, "-m", "services.trainer.program", str(job)],
            cwd=ROOT, env={**environment_without_llmos(), "OMP_NUM_THREADS": "1"},
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    progress = [json.loads(line) for line in out.splitlines() if '"progress"' in line]
    return float(progress[-1]["tokens_per_s"])


def _plain_run(config: dict[str, Any]) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "tools.bench.trainer", "--plain-only", json.dumps(config)],
        cwd=ROOT, env={**environment_without_llmos(), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return float(out.strip())


def measure(rounds: int = 2) -> dict[str, Any]:
    trainer, plain = [], []
    for _ in range(rounds):
        trainer.append(_trainer_run(CONFIG))
        plain.append(_plain_run(CONFIG))
    best_trainer, best_plain = max(trainer), max(plain)
    return {
        "bench": "trainer",
        "model": "llama " + ", ".join(f"{k}={v}" for k, v in CONFIG["model"].items()),
        "steps": CONFIG["steps"],
        "batch_size": CONFIG["batch_size"],
        "seq_len": CONFIG["seq_len"],
        "trainer_tokens_per_s": round(best_trainer, 1),
        "plain_tokens_per_s": round(best_plain, 1),
        "trainer_vs_plain_torch": round(best_trainer / best_plain, 3),
        "runs": {"trainer": [round(t, 1) for t in trainer], "plain": [round(p, 1) for p in plain]},
        "threads": 1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain-only", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", "2")))
    args = parser.parse_args(argv)
    if args.plain_only:
        print(plain_loop(json.loads(args.plain_only)))
        return 0
    print(json.dumps(measure(args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
