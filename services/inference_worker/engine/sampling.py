"""Choosing the next token for every sequence of a batch in one pass."""

from __future__ import annotations

import torch
from torch import Tensor

from llmos.generation import SamplingParams


def filter_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Temperature, then top-k, then top-p (nucleus) on one row of logits."""
    logits = logits / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        drop = cumulative - torch.softmax(ordered, dim=-1) >= params.top_p
        logits = logits.scatter(0, order[drop], float("-inf"))
    return logits


def choose_next(
    logits: Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """Next token per row of `logits` [B, V]: argmax for greedy rows, a draw otherwise.

    Logits may live on an accelerator. An all-greedy batch copies back only B token ids;
    otherwise the logits come to the CPU in one copy, where the requests' generators are
    (a seeded draw must not depend on the device), instead of one sync per row.
    """
    if all(p.greedy for p in params):
        return [int(t) for t in torch.argmax(logits, dim=-1).tolist()]
    logits = logits.float().cpu()
    chosen = torch.argmax(logits, dim=-1).tolist()
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if p.greedy:
            continue
        probs = torch.softmax(filter_logits(logits[row].float(), p), dim=-1)
        chosen[row] = int(torch.multinomial(probs, 1, generator=generator).item())
    return [int(t) for t in chosen]
