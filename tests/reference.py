"""The Hugging Face `transformers` reference model, for correctness tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmos.model.text import TextCodec


def load_reference(folder: Path) -> Any:
    """LlamaForCausalLM from transformers, float32, eval mode (typed loosely: its API is)."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()


def reference_tokens(
    reference: Any, prompt: list[int], codec: TextCodec, new_tokens: int
) -> list[int]:
    """transformers' greedy continuation of `prompt`, without end-of-turn tokens."""
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=sorted(codec.stop_token_ids),
            pad_token_id=sorted(codec.stop_token_ids)[0],
        )
    tokens = out[0, len(prompt) :].tolist()
    return [t for t in tokens if t not in codec.stop_token_ids]


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
