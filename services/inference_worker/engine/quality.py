"""How much a reduced precision changes what the model says, measured against fp32.

Two numbers, both cheap enough for tests and the benchmark: perplexity on held-out text
(the bound is <= 1.02 x fp32) and greedy agreement, the share of positions where the
reduced model's greedy choice equals fp32's. Agreement is teacher-forced: the candidate
sees fp32's own continuation as its prefix, so one early divergence does not count every
later token as a disagreement although the model is no worse there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from services.inference_worker.engine.forward import ColumnForward

#: tokens per independent window of a perplexity measurement
WINDOW = 512


def _causal(_layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def _logits(forward: ColumnForward, token_ids: list[int]) -> Tensor:
    """fp32 logits [T, V] predicting each next token of one sequence, no KV cache."""
    tokens = torch.tensor([token_ids], device=forward.device)
    positions = torch.arange(len(token_ids), device=forward.device)[None]
    with torch.inference_mode():
        return forward.logits(forward.hidden(tokens, positions, _causal))


def perplexity(forward: ColumnForward, token_ids: list[int], window: int = WINDOW) -> float:
    """exp(mean negative log-likelihood) of `token_ids`, in windows of `window` tokens."""
    if len(token_ids) < 2:
        raise ValueError(f"token_ids must hold at least 2 tokens, got {len(token_ids)}")
    total, count = 0.0, 0
    for start in range(0, len(token_ids) - 1, window):
        chunk = token_ids[start : start + window + 1]
        if len(chunk) < 2:
            break
        logits = _logits(forward, chunk[:-1])
        targets = torch.tensor(chunk[1:], device=logits.device)
        total += float(F.cross_entropy(logits, targets, reduction="sum"))
        count += len(chunk) - 1
    return math.exp(total / count)


def greedy_agreement(
    candidate: ColumnForward, prompts: list[list[int]], continuations: list[list[int]]
) -> float:
    """Share of fp32 greedy `continuations` (one per prompt) that `candidate`, given the
    same prefix, would also have chosen."""
    if len(prompts) != len(continuations) or not prompts:
        raise ValueError("prompts and continuations must be non-empty and of equal length")
    agreed, total = 0, 0
    for prompt, continuation in zip(prompts, continuations, strict=True):
        if not continuation:
            continue
        logits = _logits(candidate, prompt + continuation[:-1])
        chosen = logits[len(prompt) - 1 :].argmax(dim=-1).tolist()
        agreed += sum(a == b for a, b in zip(chosen, continuation, strict=True))
        total += len(continuation)
    if total == 0:
        raise ValueError("continuations must hold at least one token")
    return agreed / total
