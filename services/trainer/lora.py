"""LoRA (Hu et al., 2021): train a low-rank update B·A beside each frozen projection.

`attach` wraps the attention projections (q, k, v, o) of every layer and freezes all other
weights, so the optimizer holds only the small A and B matrices; `merge` folds
W + (alpha/r)·B·A back into plain Linear layers, giving a model with the base's exact
shape that any worker serves like the original.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable rank-r update (B starts at zero: no change)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        update = (x @ self.lora_a.t()) @ self.lora_b.t()
        return self.base(x) + update * self.scale  # type: ignore[no-any-return]

    def merged(self) -> nn.Linear:
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=False)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + (self.lora_b @ self.lora_a) * self.scale)
        return merged


def attach(model: nn.Module, rank: int, alpha: float) -> int:
    """Wrap the attention projections and freeze the rest; returns trainable parameters."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for module in list(model.modules()):
        for name in TARGETS:
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear):
                setattr(module, name, LoRALinear(child, rank, alpha))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge(model: nn.Module) -> None:
    """Fold every LoRA update into its base weight, in place."""
    for module in list(model.modules()):
        for name in TARGETS:
            child = getattr(module, name, None)
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
