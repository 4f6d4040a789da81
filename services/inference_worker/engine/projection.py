"""The engine's weight matrices in the representation its precision asks for.

Every linear layer of the column-layout forward computes `W @ X` for activations X
[in, tokens]. A `Projection` hides how W is stored: dense in the compute dtype, or int8
per output channel. The int8 form uses torch's own weight-only kernel
(`aten._weight_int8pack_mm`, the one torchao and gpt-fast call on CPU), not a loop of ours:
it takes activations as rows [tokens, in] in bf16, so the [in, tokens] block is transposed
(a [576, 8] copy, microseconds) and the result comes back as columns in the caller's dtype.
Wide blocks (many decode streams, prefill) multiply the widened int8 matrix instead.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

#: the weight-only int8 kernel computes in bf16 (its fp32 path is ~10x slower on AVX2)
_INT8_ACTIVATION_DTYPE = torch.bfloat16
#: from this many token columns on, int8 weights are widened and multiplied densely: the
#: int8 kernel is a matrix-vector kernel, 2.5x faster than fp32 at 8 columns but 2x slower
#: at 32 and 2.6x at 128 (prefill), while widening costs ~10% over fp32 (measured here on
#: the 3072 x 576 and 576 x 1536 matrices; they cross between 8 and 16 columns)
WIDE_COLUMNS = 16


class Projection(Protocol):
    """A weight matrix W [out, in] that multiplies activation columns."""

    #: W as stored ([out, in]: its shape is the projection's)
    weight: Tensor

    def __call__(self, columns: Tensor) -> Tensor:
        """W @ columns: [in, tokens] -> [out, tokens]."""
        ...

    @property
    def nbytes(self) -> int:
        """Memory the weight holds."""
        ...


class DenseProjection:
    """W stored as is (fp32, bf16 or fp16) on the engine's device."""

    def __init__(self, weight: Tensor, dtype: torch.dtype, device: torch.device) -> None:
        self.weight = weight.detach().to(device=device, dtype=dtype)

    def __call__(self, columns: Tensor) -> Tensor:
        return self.weight @ columns

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


class Int8Projection:
    """W as int8 with one scale per output channel (symmetric, absmax / 127).

    Per-channel scales keep the rounding error of each row proportional to that row's
    own range, which is what keeps perplexity within 2% of fp32 (tests/integration).
    """

    def __init__(self, weight: Tensor) -> None:
        if weight.device.type != "cpu":
            raise ValueError(f"precision int8 runs on CPU only, not on {weight.device.type}")
        weight = weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        self.weight = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.scales = scales.to(_INT8_ACTIVATION_DTYPE)
        self.row_scales = scales[:, None]

    def __call__(self, columns: Tensor) -> Tensor:
        if columns.shape[1] >= WIDE_COLUMNS:
            return (self.weight.to(columns.dtype) @ columns) * self.row_scales.to(columns.dtype)
        rows = columns.t().contiguous().to(_INT8_ACTIVATION_DTYPE)
        out: Tensor = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales)
        return out.t().to(columns.dtype)

    def dequantized(self) -> Tensor:
        """The fp32 matrix this int8 form stands for (for error measurements)."""
        return self.weight.float() * self.scales.float()[:, None]

    @property
    def nbytes(self) -> int:
        scales = self.scales.numel() * self.scales.element_size()
        return self.weight.numel() + scales + self.row_scales.numel() * 4
