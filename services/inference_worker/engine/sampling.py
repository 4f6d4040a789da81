"""Choosing the next token for every sequence of a batch in one pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmos.generation import SamplingParams


@dataclass(frozen=True)
class Logprobs:
    """The chosen token's log-probability under the model and the step's most likely
    tokens (id, log-probability), most likely first."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


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


def penalize(logits: Tensor, output: list[int], params: SamplingParams) -> Tensor:
    """OpenAI's presence and frequency penalties on one row: each token already in the
    output loses `presence` once and `frequency` per occurrence."""
    if not output:
        return logits
    counts = torch.bincount(torch.tensor(output), minlength=logits.shape[-1])[: logits.shape[-1]]
    counts = counts.to(logits.dtype)
    return logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)


def logprobs_of(logits: Tensor, token: int, top: int) -> Logprobs:
    """`token`'s log-probability in one row of raw logits, with the `top` most likely."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best: tuple[tuple[int, float], ...] = ()
    if top:
        values, ids = torch.topk(logprobs, top)
        best = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return Logprobs(float(logprobs[token]), best)


def choose_next(
    logits: Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    outputs: list[list[int]],
) -> tuple[list[int], list[Logprobs | None]]:
    """Next token per row of `logits` [B, V] (argmax for greedy rows, a draw otherwise,
    after the row's penalties over its `outputs` so far), with log-probabilities for rows
    that asked for them.

    Logits may live on an accelerator. A batch of plain greedy rows copies back only B
    token ids; otherwise the logits come to the CPU in one copy, where the requests'
    generators are (a seeded draw must not depend on the device), not one sync per row.
    """
    if all(p.greedy and not p.penalized and not p.logprobs for p in params):
        return [int(t) for t in torch.argmax(logits, dim=-1).tolist()], [None] * len(params)
    logits = logits.float().cpu()
    chosen = torch.argmax(logits, dim=-1).tolist()
    reported: list[Logprobs | None] = [None] * len(params)
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        scores = penalize(logits[row], outputs[row], p) if p.penalized else logits[row]
        if not p.greedy:
            probs = torch.softmax(filter_logits(scores, p), dim=-1)
            chosen[row] = int(torch.multinomial(probs, 1, generator=generator).item())
        elif p.penalized:
            chosen[row] = int(torch.argmax(scores).item())
        if p.logprobs:
            reported[row] = logprobs_of(logits[row], int(chosen[row]), p.top_logprobs)
    return [int(t) for t in chosen], reported
