"""The Hugging Face `transformers` reference model, for correctness tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_reference(folder: Path) -> Any:
    """LlamaForCausalLM from transformers, float32, eval mode (typed loosely: its API is)."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval()
