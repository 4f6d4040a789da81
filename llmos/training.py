"""A training job's configuration (`JobSpec.config`): its fields, defaults and checks.

One place for them, because the scheduler refuses a bad job at submit (a clear sentence
naming the field, nothing queued) and the trainer's program reads the same dataclass.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from llmos.errors import InvalidArgument

SCHEDULES = ("cosine", "linear", "constant")
METHODS = ("full", "lora")
#: a model trained from scratch reads bytes: 256 token ids, no tokenizer to ship
BYTE_VOCAB = 256
#: the Llama shape fields a from-scratch `model` may set, with small defaults
MODEL_DEFAULTS: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 172,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
}
MODEL_LIMITS = {"hidden_size": 16384, "intermediate_size": 65536, "num_hidden_layers": 256}
TEXT_MAX = 64 << 20


@dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters and inputs of one training job."""

    steps: int = 100
    batch_size: int = 8  # sequences per process per micro-step
    seq_len: int = 64
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # 0: no clipping
    grad_accum: int = 1
    seed: int = 0
    checkpoint_every: int = 50
    eval_every: int = 50
    val_fraction: float = 0.1
    #: from scratch: the model's shape (byte-level vocabulary)
    model: dict[str, int] = field(default_factory=dict)
    #: fine-tune: a model folder name under the models directory (its own tokenizer)
    base_model: str = ""
    #: "full" (every weight) or "lora" (low-rank updates of the attention projections,
    #: merged into the weights at the end)
    method: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    #: the registry model the result becomes a new version of (default: the job's name)
    output_model: str = ""
    #: what to train on: a dataset of the job's tenant (in storage), or the text itself
    dataset: str = ""
    text: str = ""

    @classmethod
    def parse(cls, raw: dict[str, Any], prefix: str = "spec.config") -> TrainingConfig:
        """Read and check a job's config; InvalidArgument names the first bad field."""
        known = {f.name: f for f in fields(cls)}
        for key in raw:
            if key not in known:
                raise InvalidArgument(f"{prefix}.{key}", "is not a training setting")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            default = getattr(cls(), name)
            path = f"{prefix}.{name}"
            if isinstance(default, int):
                values[name] = _integer(value, path)
            elif isinstance(default, float):
                values[name] = _number(value, path)
            elif isinstance(default, str):
                if not isinstance(value, str):
                    raise InvalidArgument(path, "must be a string")
                values[name] = value
            else:
                if not isinstance(value, dict):
                    raise InvalidArgument(path, "must be an object")
                values[name] = {k: _integer(v, f"{path}.{k}") for k, v in value.items()}
        config = cls(**values)
        config.check(prefix)
        return config

    def check(self, prefix: str = "spec.config") -> None:
        def need(ok: bool, name: str, sentence: str) -> None:
            if not ok:
                raise InvalidArgument(f"{prefix}.{name}", sentence)

        need(1 <= self.steps <= 10_000_000, "steps", "must be between 1 and 10000000")
        need(1 <= self.batch_size <= 65_536, "batch_size", "must be between 1 and 65536")
        need(2 <= self.seq_len <= 1_048_576, "seq_len", "must be between 2 and 1048576")
        need(
            math.isfinite(self.learning_rate) and 0 < self.learning_rate < 10,
            "learning_rate",
            "must be above 0 and below 10",
        )
        need(self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}")
        need(0 <= self.warmup_steps <= self.steps, "warmup_steps", "must be between 0 and steps")
        need(0 <= self.weight_decay < 1, "weight_decay", "must be at least 0 and below 1")
        need(0 <= self.grad_clip <= 1e6, "grad_clip", "must be between 0 and 1000000")
        need(1 <= self.grad_accum <= 4096, "grad_accum", "must be between 1 and 4096")
        need(0 <= self.seed < 2**63, "seed", "must be between 0 and 2**63-1")
        need(self.checkpoint_every >= 1, "checkpoint_every", "must be at least 1")
        need(self.eval_every >= 1, "eval_every", "must be at least 1")
        need(0 < self.val_fraction < 0.5, "val_fraction", "must be above 0 and below 0.5")
        need(self.method in METHODS, "method", f"must be one of {', '.join(METHODS)}")
        need(1 <= self.lora_rank <= 1024, "lora_rank", "must be between 1 and 1024")
        need(0 < self.lora_alpha <= 10_000, "lora_alpha", "must be above 0 and at most 10000")
        need(
            bool(self.text or self.dataset),
            "dataset",
            "is required (or text): there is nothing to train on",
        )
        need(not (self.text and self.dataset), "text", "cannot be set together with dataset")
        need(len(self.text) <= TEXT_MAX, "text", f"is longer than {TEXT_MAX} characters")
        if self.output_model:
            need(
                re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,127}", self.output_model) is not None
                and ".." not in self.output_model,
                "output_model",
                "must be a model name (1-128 of a-z 0-9 . _ -)",
            )
        if self.base_model:
            need(not self.model, "model", "cannot be set together with base_model")
            need(
                "/" not in self.base_model and not self.base_model.startswith("."),
                "base_model",
                "must be a model name, not a path",
            )
        else:
            for key, value in self.model.items():
                need(key in MODEL_DEFAULTS, f"model.{key}", "is not a model shape setting")
                need(
                    1 <= value <= MODEL_LIMITS.get(key, 65_536),
                    f"model.{key}",
                    f"must be between 1 and {MODEL_LIMITS.get(key, 65_536)}",
                )
            shape = self.model_shape()
            need(
                shape["hidden_size"] % shape["num_attention_heads"] == 0,
                "model.hidden_size",
                "must be a multiple of num_attention_heads",
            )
            need(
                shape["num_attention_heads"] % shape["num_key_value_heads"] == 0,
                "model.num_attention_heads",
                "must be a multiple of num_key_value_heads",
            )
            need(
                self.seq_len <= shape["max_position_embeddings"],
                "seq_len",
                f"{self.seq_len} is above the model's context of "
                f"{shape['max_position_embeddings']} tokens",
            )

    def model_shape(self) -> dict[str, int]:
        """A from-scratch model's Llama config fields (defaults filled in)."""
        return {**MODEL_DEFAULTS, **self.model, "vocab_size": BYTE_VOCAB}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _integer(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InvalidArgument(path, "must be a whole number")
    return int(value)


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(path, "must be a finite number")
    return float(value)


def parameter_count(vocab: int, hidden: int, intermediate: int, layers: int) -> int:
    """Parameters of a Llama shape (embeddings and head counted apart; attention as if
    every head had its own keys and values — an upper bound under grouped queries)."""
    return vocab * hidden * 2 + layers * (4 * hidden * hidden + 3 * hidden * intermediate)


def memory_needed(
    config: TrainingConfig, parameters: int, hidden: int, layers: int, vocab: int
) -> int:
    """Bytes one process needs to train, roughly: fp32 weights, gradients and AdamW's two
    moments (16 bytes a parameter), activations kept for the backward pass (~34 bytes per
    token, layer and hidden unit) and the logits with their gradient."""
    tokens = config.batch_size * config.seq_len
    return 16 * parameters + 34 * tokens * hidden * layers + 8 * tokens * vocab


def check_memory(needed: int, reserved: int) -> None:
    """Refuse a job whose batch cannot fit in the memory it reserves per process."""
    if reserved and needed > reserved:
        raise InvalidArgument(
            "spec.resources.memory_bytes",
            f"the job needs about {needed >> 20} MiB per process (weights, gradients, AdamW "
            f"state, activations) but reserves {reserved >> 20} MiB; reserve more or lower "
            "batch_size or seq_len",
        )


def attempt_key(job_id: str, attempt: int) -> str:
    """How a running attempt of a job is named between trainers (their heartbeats list
    the attempts they run) and schedulers (whose leases read them)."""
    return f"{job_id}@{attempt}"
