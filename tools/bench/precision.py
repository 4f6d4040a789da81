"""The engine's speed and quality per weight precision: `python -m tools.bench.precision`.

`measure()` returns one dict (printed as a JSON line) that the benchmark can merge:
  choice                   what choose_precision("auto") picks here, with its timings
  <p>_cN_tokens_per_s      decode throughput of N concurrent greedy requests (64 tokens
                           each, prompts prefilled beforehand), the engine alone
  <p>_cN_step_ms           one decode step for N streams
  <p>_ppl, <p>_ppl_ratio   perplexity on held-out text, and its ratio to fp32's
  <p>_greedy_agreement     share of fp32's greedy tokens (8 prompts x 64) <p> also picks
Every precision runs in the same process, one after another, so they share the noise of
the machine; compare them side by side, not with other runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from llmos.generation import SamplingParams
from llmos.model.default import ensure_default_model
from llmos.model.folder import load_model
from llmos.model.llama import LlamaForCausalLM
from llmos.model.text import TextCodec
from services.inference_worker.engine.engine import Engine, TokenEvent
from services.inference_worker.engine.forward import ColumnForward
from services.inference_worker.engine.precision import (
    CPU,
    Precision,
    choose_precision,
    decode_probe,
    parse_precision,
)
from services.inference_worker.engine.quality import greedy_agreement, perplexity
from tests.corpus import TEXT
from tests.reference import PROMPTS


def generate(
    engine: Engine, prompts: list[list[int]], new_tokens: int
) -> tuple[list[list[int]], float, int]:
    """Greedy continuations of all prompts at once, driving the engine on this thread;
    also the seconds and steps the decode took after the first (prefill) step."""
    outputs: list[list[int]] = [[] for _ in prompts]
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    for index, prompt in enumerate(prompts):

        def sink(event: TokenEvent, out: list[int] = outputs[index]) -> None:
            if event.token_id is not None:
                out.append(event.token_id)

        engine.submit(prompt, params, sink)
    engine.step()  # admits and prefills every prompt, and decodes once
    start, steps = time.perf_counter(), engine.steps
    while engine.has_work():
        engine.step()
    return outputs, time.perf_counter() - start, engine.steps - steps


def chat(codec: TextCodec, prompt: str) -> list[int]:
    return codec.encode(codec.render_chat([{"role": "user", "content": prompt}]))


def measure(
    model: LlamaForCausalLM,
    codec: TextCodec,
    precisions: tuple[Precision, ...] = ("fp32", "int8"),
    streams: tuple[int, ...] = (1, 32),
    new_tokens: int = 64,
    text: str = TEXT,
    device: torch.device = CPU,
) -> dict[str, Any]:
    """Speed and quality of each precision against fp32 (see the module docstring)."""
    choice = choose_precision("auto", device, probe=decode_probe(model))
    result: dict[str, Any] = {
        "choice": choice.name,
        "choice_timings_us": {
            k: {str(w): round(t) for w, t in v.items()} for k, v in choice.timings_us.items()
        },
    }
    prompts = [chat(codec, p) for p in PROMPTS]
    held_out = codec.encode(text)
    reference: list[list[int]] = []
    order: list[Precision] = ["fp32", *[p for p in precisions if p != "fp32"]]
    for precision in order:
        engine = Engine(model, codec, max_batch=max(streams), precision=precision, device=device)
        with torch.inference_mode():
            for count in streams:
                batch = [prompts[i % len(prompts)] for i in range(count)]
                _, seconds, steps = generate(engine, batch, new_tokens)
                result[f"{precision}_c{count}_tokens_per_s"] = round(
                    count * (new_tokens - 1) / seconds, 1
                )
                result[f"{precision}_c{count}_step_ms"] = round(1000 * seconds / max(steps, 1), 2)
            if precision == "fp32":
                reference, _, _ = generate(engine, prompts, new_tokens)
        forward: ColumnForward = engine.forward
        result[f"{precision}_ppl"] = round(perplexity(forward, held_out), 4)
        result[f"{precision}_greedy_agreement"] = round(
            greedy_agreement(forward, prompts, reference), 4
        )
        result[f"{precision}_ppl_ratio"] = round(result[f"{precision}_ppl"] / result["fp32_ppl"], 4)
    return result


def _precision(name: str) -> Precision:
    parsed = parse_precision(name)
    if parsed == "auto":
        raise SystemExit("--precisions: name the precisions to compare, not auto")
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("var/models"))
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--streams", default="1,32")
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args(argv)
    args.models.mkdir(parents=True, exist_ok=True)
    folder = ensure_default_model(args.models)
    result = measure(
        load_model(folder),
        TextCodec(folder),
        tuple(_precision(name) for name in args.precisions.split(",")),
        tuple(int(s) for s in args.streams.split(",")),
        args.tokens,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
