"""`make bench-engine`: the engine against Hugging Face transformers, then end to end.

Line 1 (one process, all torch on the main thread, same model, prompts and greedy
decoding, a fixed number of output tokens per request):
  hf_tokens_per_s          transformers `generate`, one request at a time
  hf_batch32_tokens_per_s  transformers `generate` on a static, left-padded batch of 32
  engine_cN_tokens_per_s   the engine with N closed-loop clients (N = 1, 8, 32)
  p50/p99 time to first token and inter-token latency per concurrency, the ratios, and
  a profile of the engine at 32 streams (share of time per kind of operator).
Line 2: the same load at concurrency 32 through gateway -> NATS -> worker -> Triton,
started with the dev launcher, and e2e_vs_engine_c32.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from llmos.generation import SamplingParams
from llmos.model.default import ensure_default_model
from llmos.model.folder import load_model
from llmos.model.text import TextCodec
from services.inference_worker.engine.engine import Engine, GenerationMetrics, TokenEvent
from tools.devstack.process import StackProcess
from tools.scratch import scratch_directory

WORDS = [
    "the",
    "system",
    "schedules",
    "work",
    "across",
    "many",
    "workers",
    "while",
    "storage",
    "keeps",
    "every",
    "model",
    "safe",
    "and",
    "the",
    "audit",
    "log",
    "records",
    "each",
    "action",
    "so",
    "operators",
    "can",
    "answer",
    "who",
    "did",
    "what",
    "and",
    "when",
    "it",
    "happened",
    "under",
    "load",
    "with",
    "streaming",
    "tokens",
    "and",
    "fair",
    "queues",
    "for",
    "every",
    "tenant",
]


def make_prompts(codec: TextCodec, count: int, seed: int = 7) -> list[list[int]]:
    """Plain-text prompts of varied length (about 8 to 70 tokens), reproducibly."""
    rng = random.Random(seed)
    return [
        codec.encode(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 60))))
        for _ in range(count)
    ]


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1), 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def bench_hf_single(reference: Any, prompts: list[list[int]], out: int) -> float:
    """Tokens/s of transformers generating one request at a time."""
    start, tokens = time.perf_counter(), 0
    for prompt in prompts:
        ids = torch.tensor([prompt])
        result = reference.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=out,
            min_new_tokens=out,
            do_sample=False,
            pad_token_id=2,
        )
        tokens += result.shape[1] - len(prompt)
    return float(tokens / (time.perf_counter() - start))


def bench_hf_batch(reference: Any, prompts: list[list[int]], out: int) -> float:
    """Tokens/s of transformers on one static, left-padded batch."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), 2, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    start = time.perf_counter()
    result = reference.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=out,
        min_new_tokens=out,
        do_sample=False,
        pad_token_id=2,
    )
    return float(result.shape[0] * (result.shape[1] - width)) / (time.perf_counter() - start)


def bench_engine(
    engine: Engine, prompts: list[list[int]], out: int, concurrency: int, requests: int
) -> dict[str, float]:
    """Closed loop: `concurrency` clients, each sending its next request when one ends.

    The engine is stepped on this (the main) thread, as the worker does.
    """
    metrics: list[GenerationMetrics] = []
    submitted = [0]
    params = SamplingParams(max_tokens=out, ignore_eos=True)

    def submit() -> None:
        index = submitted[0]
        submitted[0] += 1
        engine.submit(prompts[index % len(prompts)], params, on_event)

    def on_event(event: TokenEvent) -> None:
        if event.finish_reason is not None:
            assert event.metrics is not None
            metrics.append(event.metrics)
            if submitted[0] < requests:
                submit()

    start = time.perf_counter()
    for _ in range(min(concurrency, requests)):
        submit()
    while engine.has_work():
        engine.step()
    elapsed = time.perf_counter() - start
    gaps = [gap for m in metrics for gap in m.inter_token_s]
    ttft = [m.time_to_first_token_s for m in metrics]
    return {
        "tokens_per_s": sum(m.tokens_out for m in metrics) / elapsed,
        "ttft_p50_ms": 1000 * percentile(ttft, 0.5),
        "ttft_p99_ms": 1000 * percentile(ttft, 0.99),
        "itl_p50_ms": 1000 * percentile(gaps, 0.5),
        "itl_p99_ms": 1000 * percentile(gaps, 0.99),
    }


def profile_engine(engine: Engine, prompts: list[list[int]], out: int) -> dict[str, float]:
    """Where a c32 decode step spends its time, by operator family (percent of CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    params = SamplingParams(max_tokens=out, ignore_eos=True)
    for prompt in prompts[:32]:
        engine.submit(prompt, params, lambda _event: None)
    for _ in range(3):  # prefill and warm-up outside the profile
        engine.step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(8):
            engine.step()
    step_ms = 1000 * (time.perf_counter() - start) / 8
    while engine.has_work():
        engine.step()
    families = {
        "matmul": ("aten::mm", "aten::addmm", "aten::matmul"),
        "attention": ("attention", "aten::bmm"),
    }
    totals = dict.fromkeys([*families, "other"], 0.0)
    for event in prof.key_averages():
        family = next(
            (name for name, keys in families.items() if any(k in event.key for k in keys)), "other"
        )
        totals[family] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    shares = {f"{name}_pct": round(100 * value / whole, 1) for name, value in totals.items()}
    return {"c32_step_ms": round(step_ms, 1), **shares}


def run_engine_line(out: int) -> dict[str, Any]:
    """Everything in this process; returns line 1."""
    torch.set_grad_enabled(False)
    folder = ensure_default_model(Path(os.environ.get("LLMOS_DATA_DIR", "var")) / "models")
    codec = TextCodec(folder)
    prompts = make_prompts(codec, 64)
    from tests.reference import load_reference

    reference = load_reference(folder)
    result: dict[str, Any] = {"model": folder.name, "output_tokens_per_request": out}
    result["hf_tokens_per_s"] = round(bench_hf_single(reference, prompts[:4], out), 2)
    result["hf_batch32_tokens_per_s"] = round(bench_hf_batch(reference, prompts[:32], out), 2)
    del reference
    engine = Engine(load_model(folder), codec, max_batch=32, max_context=2048)
    for concurrency, requests in ((1, 4), (8, 16), (32, 64)):
        stats = bench_engine(engine, prompts, out, concurrency, requests)
        result[f"engine_c{concurrency}_tokens_per_s"] = round(stats.pop("tokens_per_s"), 2)
        for key, value in stats.items():
            result[f"engine_c{concurrency}_{key}"] = round(value, 1)
    result["ratio_c32_vs_hf"] = round(
        result["engine_c32_tokens_per_s"] / result["hf_tokens_per_s"], 2
    )
    result["ratio_c32_vs_hf_batch32"] = round(
        result["engine_c32_tokens_per_s"] / result["hf_batch32_tokens_per_s"], 2
    )
    result["profile"] = profile_engine(engine, prompts, out)
    return result


def run_e2e_line(out: int, engine_c32: float) -> dict[str, Any]:
    """Start the stack, drive 64 requests at concurrency 32 through the gateway."""
    models = Path(os.environ.get("LLMOS_DATA_DIR", "var")).resolve() / "models"
    with scratch_directory("llmos-bench-") as workdir:
        return _run_e2e(workdir, models, out, engine_c32)


def _run_e2e(workdir: Path, models: Path, out: int, engine_c32: float) -> dict[str, Any]:
    from llmos.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2
    from tools.devstack.access import admin_token, gateway_channel

    launcher = StackProcess(
        workdir,
        # no response cache: every request must reach the engine
        env={
            "LLMOS_MODELS_DIR": str(models),
            "LLMOS_LOG_LEVEL": "warning",
            "LLMOS_CACHE_TTL_S": "0",
        },
    )
    try:
        fields = launcher.start()
        with gateway_channel(fields, admin_token(fields)) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            codec = TextCodec(models / "smollm2-135m-instruct")
            bodies = [codec.decode(p) for p in make_prompts(codec, 64)]
            params = inference_pb2.GenerationParams(max_tokens=out, ignore_eos=True)

            def one(index: int) -> int:
                request = gateway_pb2.GenerateRequest(prompt=bodies[index], params=params)
                return sum(len(r.token_ids) for r in stub.Generate(request, timeout=600))

            list(ThreadPoolExecutor(2).map(one, range(2)))  # warm-up
            start = time.perf_counter()
            with ThreadPoolExecutor(32) as pool:
                tokens = sum(pool.map(one, range(64)))
            rate = tokens / (time.perf_counter() - start)
        return {
            "e2e_c32_tokens_per_s": round(rate, 2),
            "e2e_vs_engine_c32": round(rate / engine_c32, 3),
            "path": "gateway (TLS, bearer JWT) -> scheduler -> inference-worker (NATS) "
            "-> Triton (PyTriton) -> engine",
        }
    finally:
        launcher.stop()


def main(argv: list[str] | None = None) -> int:
    """Print the two JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args(argv)
    first = run_engine_line(args.output_tokens)
    print(json.dumps(first), flush=True)
    if not args.skip_e2e:
        print(
            json.dumps(run_e2e_line(args.output_tokens, first["engine_c32_tokens_per_s"])),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
