"""A training checkpoint on disk, in a form that is only ever read, never run.

A checkpoint travels: it is uploaded to the tenant's storage and restored on whichever
trainer resumes the job. A pickle (`torch.load(weights_only=False)`) would turn a
tampered blob into code running on that trainer, next to the data directory's secrets,
so the file is safetensors: tensors (weights, AdamW's moments and steps, the RNG state)
in the body, everything else (step, samples, learning-rate schedule, optimizer groups)
as JSON in the header's metadata. One file, so storage still holds one blob per
checkpoint. Reading it parses a length-prefixed JSON header and copies bytes; a file
that is anything else is refused with a sentence, never unpickled.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FORMAT = "llmos-checkpoint/1"
#: a header is a JSON index of tensor names and offsets: far below this for any model
MAX_HEADER_BYTES = 64 << 20
_MODEL, _OPTIMIZER, _RNG = "model/", "optimizer/", "rng"


class CheckpointRefused(ValueError):
    """The file is not a checkpoint this program wrote (it is never unpickled)."""


@dataclass
class Checkpoint:
    """What a resumed run needs to continue exactly where it stopped."""

    step: int
    samples: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    rng: torch.Tensor


def write(path: Path, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` to `path` (the caller makes it atomic)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}  # tied weights share storage; safetensors stores it once
    seen: dict[tuple[int, torch.Size, torch.dtype], str] = {}
    for name, tensor in checkpoint.model.items():
        plain = tensor.detach().cpu().contiguous()
        key = (plain.data_ptr(), plain.shape, plain.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[_MODEL + name] = plain
    state: dict[str, dict[str, Any]] = {}
    for index, values in checkpoint.optimizer["state"].items():
        state[str(index)] = {}
        for field, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIMIZER}{index}/{field}"] = value.detach().cpu().contiguous()
            else:
                state[str(index)][field] = value
    tensors[_RNG] = checkpoint.rng.cpu().contiguous()
    document = {
        "step": checkpoint.step,
        "samples": checkpoint.samples,
        "aliases": aliases,
        "optimizer_state": state,
        "optimizer_groups": checkpoint.optimizer["param_groups"],
        "schedule": checkpoint.schedule,
    }
    try:
        metadata = {"format": FORMAT, "state": json.dumps(document, allow_nan=False)}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the checkpoint's training state is not plain data: {exc}") from None
    save_file(tensors, str(path), metadata=metadata)


def read(path: Path) -> Checkpoint:
    """The checkpoint at `path`; CheckpointRefused for a file this program did not write
    (a pickle, a truncated file, another format)."""
    _check_header(path)
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise CheckpointRefused(f"{path.name} is not an LLM OS checkpoint ({FORMAT})")
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
        document = json.loads(metadata["state"])
        model = {n[len(_MODEL) :]: t for n, t in tensors.items() if n.startswith(_MODEL)}
        for name, same in document["aliases"].items():
            model[name] = model[same]
        state: dict[int, dict[str, Any]] = {
            int(index): dict(values) for index, values in document["optimizer_state"].items()
        }
        for name, tensor in tensors.items():
            if name.startswith(_OPTIMIZER):
                index, _, field = name[len(_OPTIMIZER) :].partition("/")
                state.setdefault(int(index), {})[field] = tensor
        groups = [
            {k: tuple(v) if k == "betas" else v for k, v in group.items()}
            for group in document["optimizer_groups"]
        ]
        return Checkpoint(
            step=int(document["step"]),
            samples=int(document["samples"]),
            model=model,
            optimizer={"state": state, "param_groups": groups},
            schedule=dict(document["schedule"]),
            rng=tensors[_RNG],
        )
    except CheckpointRefused:
        raise
    except (SafetensorError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointRefused(f"{path.name} is damaged or incomplete: {exc}") from None


def _check_header(path: Path) -> None:
    """A safetensors file starts with its header's length and then `{`; a pickle (a zip
    archive from torch.save, or a bare pickle) does not."""
    with path.open("rb") as file:
        start = file.read(9)
    if len(start) < 9:
        raise CheckpointRefused(f"{path.name} is too short to be a checkpoint")
    (length,) = struct.unpack("<Q", start[:8])
    if length > MAX_HEADER_BYTES or start[8:9] != b"{":
        raise CheckpointRefused(
            f"{path.name} is not a safetensors checkpoint (a pickle or another format); "
            "it is refused unread, never unpickled"
        )
