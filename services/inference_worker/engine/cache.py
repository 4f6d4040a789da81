"""The KV cache: one tensor holding past keys and values of every running sequence.

Layout [layer, key|value, slot, kv_head, position, head_dim]. Running sequences occupy
slots 0..B-1 with no holes, so a decode step attends over a plain view of the first B
slots; when a sequence leaves, the last one moves into its slot (one copy). Capacity in
positions grows by doubling up to the context limit, so short chats stay small.
"""

from __future__ import annotations

import torch

from llmos.model.llama import LlamaConfig
from services.inference_worker.engine.precision import CPU

INITIAL_POSITIONS = 256


class KVCache:
    """Keys and values for up to `slots` sequences of up to `max_positions` tokens."""

    def __init__(
        self,
        config: LlamaConfig,
        slots: int,
        max_positions: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device = CPU,
    ) -> None:
        self.config = config
        self.dtype = dtype
        self.device = device
        self.slots = slots
        self.max_positions = max_positions
        self.data = self._allocate(min(INITIAL_POSITIONS, max_positions))

    def _allocate(self, positions: int) -> torch.Tensor:
        c = self.config
        return torch.zeros(
            c.num_hidden_layers,
            2,
            self.slots,
            c.num_key_value_heads,
            positions,
            c.head_dim,
            dtype=self.dtype,
            device=self.device,
        )

    @property
    def capacity(self) -> int:
        """Positions each slot can hold right now."""
        return int(self.data.shape[4])

    @property
    def nbytes(self) -> int:
        """Memory the cache holds."""
        return self.data.numel() * self.data.element_size()

    def ensure(self, positions: int) -> None:
        """Grow (doubling, up to the limit) so every slot can hold `positions` tokens."""
        if positions <= self.capacity:
            return
        if positions > self.max_positions:
            raise ValueError(f"{positions} positions exceed the cache limit {self.max_positions}")
        grown = self.capacity
        while grown < positions:
            grown *= 2
        bigger = self._allocate(min(grown, self.max_positions))
        bigger[:, :, :, :, : self.capacity] = self.data
        self.data = bigger

    def keys(self, layer: int) -> torch.Tensor:
        """[slot, kv_head, position, head_dim] keys of one layer."""
        return self.data[layer, 0]

    def values(self, layer: int) -> torch.Tensor:
        """[slot, kv_head, position, head_dim] values of one layer."""
        return self.data[layer, 1]

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` positions of slot `source` into slot `target`."""
        self.data[:, :, target, :, :length] = self.data[:, :, source, :, :length]

    def span(self, slot: int, start: int, end: int) -> torch.Tensor:
        """[layer, key|value, kv_head, end - start, head_dim] view of one slot's positions."""
        return self.data[:, :, slot, :, start:end]

    def load(self, slot: int, start: int, kv: torch.Tensor) -> None:
        """Write `kv` (laid out as `span` returns it) into a slot from position `start`."""
        self.data[:, :, slot, :, start : start + kv.shape[3]] = kv
