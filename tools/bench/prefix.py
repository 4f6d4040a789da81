"""Time to first token with a tenant's cached system prompt against a cold prefill.

`bench_prefix(engine, codec)` returns a dict for `make bench-engine`; run alone with
`python -m tools.bench.prefix` (one JSON line). The issue's target: ratio <= 0.3 for a
400-token system prompt. Cold and warm requests alternate in one run, each cold one under
a tenant never seen before, so both see the same machine load.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import uuid
from pathlib import Path

import torch

from llmos.generation import SamplingParams
from llmos.model.default import ensure_default_model
from llmos.model.folder import load_model
from llmos.model.text import TextCodec
from services.inference_worker.engine.engine import Engine, GenerationMetrics, TokenEvent

QUESTIONS = [
    "What does the audit log record?",
    "Who can read another tenant's models?",
    "How are jobs scheduled?",
    "Where are checkpoints kept?",
    "What happens when a worker fails?",
]


def system_prompt(codec: TextCodec, tokens: int) -> str:
    """A system prompt of about `tokens` tokens (whole sentences, cut to fit)."""
    sentence = "Operators of this platform keep every tenant's data apart and audited. "
    text = sentence * (tokens // max(1, len(codec.encode(sentence))) + 1)
    return codec.decode(codec.encode(text)[:tokens])


def first_token_s(engine: Engine, prompt: list[int], tenant: str) -> float:
    """Time to first token of one request, the engine stepped on this thread."""
    result: list[GenerationMetrics] = []

    def sink(event: TokenEvent) -> None:
        if event.metrics is not None:
            result.append(event.metrics)

    engine.submit(prompt, SamplingParams(max_tokens=1, ignore_eos=True), sink, tenant=tenant)
    while engine.has_work():
        engine.step()
    return result[0].time_to_first_token_s


def bench_prefix(
    engine: Engine, codec: TextCodec, system_tokens: int = 400, rounds: int = 5
) -> dict[str, float]:
    """Median TTFT cached vs cold for chat prompts behind a `system_tokens` system prompt."""
    system = system_prompt(codec, system_tokens)

    def chat(question: str) -> list[int]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return codec.encode(codec.render_chat(messages))

    tenant = f"bench-{uuid.uuid4()}"
    first_token_s(engine, chat("Warm up."), tenant)  # fills the cache, warms the kernels
    hits_before = engine.prefix_stats.hit_tokens
    cold, warm = [], []
    for index in range(rounds):
        prompt = chat(QUESTIONS[index % len(QUESTIONS)])
        cold.append(first_token_s(engine, prompt, tenant=f"cold-{uuid.uuid4()}"))
        warm.append(first_token_s(engine, prompt, tenant=tenant))
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    reused = engine.prefix_stats.hit_tokens - hits_before
    return {
        "prefix_prompt_tokens": len(chat(QUESTIONS[0])),
        "prefix_reused_tokens_per_request": reused / rounds,
        "prefix_cold_ttft_ms": round(1000 * cold_s, 1),
        "prefix_cached_ttft_ms": round(1000 * warm_s, 1),
        "prefix_ttft_ratio": round(warm_s / cold_s, 3),
    }


def main() -> int:
    """Print one JSON line."""
    torch.set_grad_enabled(False)
    folder = ensure_default_model(Path(os.environ.get("LLMOS_DATA_DIR", "var")) / "models")
    codec = TextCodec(folder)
    engine = Engine(load_model(folder), codec, max_batch=8, max_context=2048)
    print(json.dumps({"model": folder.name, **bench_prefix(engine, codec)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
