"""Which number format the engine keeps its weights in, chosen once at load.

"auto" picks by measurement, not by rule of thumb: on CPU the candidates are timed on the
model's own decode-shaped matmul ([out, in] @ [in, tokens] for 1 and 32 token columns) and
the fastest wins. Only candidates known to stay within the quality bound (perplexity
<= 1.02 x fp32; tests/integration/test_precision.py holds int8 to it) are timed, so the
load does not spend seconds measuring perplexity. bf16 is a CPU candidate only where the
CPU has AVX-512 (possibly bf16 instructions): on AVX2 it is emulated and measured 7x
slower than fp32. On CUDA "auto" is bf16 (fp16 where bf16 is unsupported): tensor cores
make both far faster than fp32 and the weights take half the memory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
from torch import Tensor

from llmos.model.llama import LlamaForCausalLM
from services.inference_worker.engine.projection import (
    DenseProjection,
    Int8Projection,
    Projection,
)

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16", "int8")
#: CPU capabilities (torch.backends.cpu.get_cpu_capability()) where bf16 matmul is emulated
_NO_BF16_CPUS = frozenset({"DEFAULT", "NO AVX", "AVX2", "VSX", "Z VECTOR"})
#: the default device of the engine and its parts
CPU = torch.device("cpu")
#: token columns the auto choice times: one stream and a full batch of decode
DECODE_COLUMNS = (1, 32)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision in use, why, and what each candidate measured (for logs and benches)."""

    name: Precision
    requested: str
    reason: str
    #: candidate -> {token columns: best microseconds of one decode-shaped matmul}
    timings_us: dict[str, dict[int, float]] = field(default_factory=dict)


def parse_precision(requested: str) -> Precision | Literal["auto"]:
    """The precision named by `requested`, or ValueError naming the bad value."""
    if requested == "auto" or requested in PRECISIONS:
        return cast("Precision | Literal['auto']", requested)
    raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {requested!r}")


def activation_dtype(precision: Precision) -> torch.dtype:
    """The dtype activations (and the KV cache) use with this weight precision."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def head_precision(precision: Precision) -> Precision:
    """The precision of the LM head for a model in `precision`.

    int8 leaves the head (the tied embedding, 49152 x 576) in fp32: quantizing it too is
    faster (measured 3.4 vs 9.4 ms per one-token step here) but its rounding lands
    directly on the logits, and it alone took perplexity on tests/corpus.py from 1.007 to
    1.018 x fp32, too close to the 1.02 bound to hold on other text.
    """
    return "fp32" if precision == "int8" else precision


def project(weight: Tensor, precision: Precision, device: torch.device) -> Projection:
    """`weight` [out, in] in the representation `precision` asks for, on `device`."""
    if precision == "int8":
        return Int8Projection(weight.to(device))
    return DenseProjection(weight, activation_dtype(precision), device)


def decode_probe(model: LlamaForCausalLM) -> Tensor:
    """The matrix "auto" times: the first layer's fused gate/up, the largest per layer."""
    mlp = next(iter(model.decoder_layers())).mlp
    return torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()


def choose_precision(
    requested: str,
    device: torch.device,
    *,
    probe: Tensor | None = None,
    columns: Sequence[int] = DECODE_COLUMNS,
) -> PrecisionChoice:
    """Honour an explicit precision; for "auto", the fastest candidate on this machine.

    `probe` is a weight of the model ([out, in]; the fused gate/up matrix is the largest
    per layer) timed for each candidate at each width in `columns`; the candidate with the
    least total time wins. Without a probe a random matrix of SmolLM2-135M's gate/up shape
    stands in.
    """
    name = parse_precision(requested)
    if name == "int8" and device.type != "cpu":
        raise ValueError(f"precision int8 runs on CPU only, not on {device.type}")
    if name != "auto":
        return PrecisionChoice(name, requested, "requested")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return PrecisionChoice(
            "bf16" if bf16 else "fp16", requested, "CUDA: half-precision tensor cores"
        )
    if device.type != "cpu":
        return PrecisionChoice("fp32", requested, f"no measured choice for {device.type}")
    capability = torch.backends.cpu.get_cpu_capability()
    candidates: list[Precision] = ["fp32", "int8"]
    if capability not in _NO_BF16_CPUS:
        candidates.append("bf16")
    weight = probe if probe is not None else torch.randn(3072, 576) * 0.05
    timings = {c: _time_candidate(weight, c, columns) for c in candidates}
    best = min(candidates, key=lambda c: sum(timings[c].values()))
    widths = "+".join(str(c) for c in columns)
    return PrecisionChoice(
        best,
        requested,
        f"fastest on {capability} for {widths} token columns",
        {c: timings[c] for c in candidates},
    )


def _time_candidate(
    weight: Tensor, precision: Precision, columns: Sequence[int]
) -> dict[int, float]:
    """Best-of-5 microseconds of one probe matmul per width (a few ms in all)."""
    matrix = project(weight, precision, CPU)
    timings = {}
    for width in columns:
        x = torch.randn(weight.shape[1], width, dtype=activation_dtype(precision))
        matrix(x)  # first call packs / warms caches
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            matrix(x)
            best = min(best, time.perf_counter() - start)
        timings[width] = best * 1e6
    return timings
