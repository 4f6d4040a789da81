"""The Hugging Face `transformers` reference model, for correctness tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmos.model.text import TextCodec

#: the prompts greedy output is compared on (tests and tools/bench)
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain gravity to a child in two sentences.",
    "Translate 'good morning' into Spanish.",
    "def fibonacci(n):",
    "Give me a recipe for pancakes. Start with the ingredients, then the steps, and keep it short.",
    "2 + 2 =",
]


def load_reference(folder: Path) -> Any:
    """LlamaForCausalLM from transformers, float32, eval mode (typed loosely: its API is)."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def reference_tokens(
    reference: Any, prompts: list[list[int]], codec: TextCodec, new_tokens: int
) -> list[list[int]]:
    """transformers' greedy continuations of `prompts`, each up to its end-of-turn token.

    One left-padded batch, one `generate` call: one call per prompt made the reference
    the slowest part of the tests. Padding can change a logit in its last bits, so a
    difference it causes is a near-tie, which `assert_same_or_near_tie` checks against
    the unpadded model.
    """
    stops = codec.stop_token_ids
    pad = sorted(stops)[0]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    with torch.no_grad():
        out = reference.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=sorted(stops),
            pad_token_id=pad,
        )
    continuations = []
    for row in out[:, width:].tolist():
        end = next((i for i, token in enumerate(row) if token in stops), len(row))
        continuations.append(row[:end])
    return continuations


def assert_same_or_near_tie(
    reference: Any, prompt: list[int], expected: list[int], got: list[int]
) -> None:
    """Tokens must be equal; the only excuse is a genuine near-tie at the first difference."""
    for step, (want, have) in enumerate(zip(expected, got, strict=False)):
        if want != have:
            with torch.no_grad():
                logits = reference(torch.tensor([prompt + expected[:step]])).logits[0, -1]
            top = torch.topk(logits, 2)
            gap = float(top.values[0] - top.values[1])
            assert set(top.indices.tolist()) == {want, have}, f"step {step}: not a top-2 swap"
            assert gap < 1e-3, f"step {step}: tokens differ but the top-2 gap is {gap:.2e}"
            return
    assert len(expected) == len(got), f"lengths differ: {len(expected)} vs {len(got)}"
