"""The Hugging Face-layout model folder: how LLM OS stores a model version on disk.

config.json, model.safetensors, tokenizer.json, tokenizer_config.json (with the chat
template) and generation_config.json. Workers load it (fast: safetensors maps the file),
the trainer fine-tunes from it and writes new versions in the same layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llmos.errors import InvalidArgument
from llmos.model.limits import read_folder_config
from llmos.model.llama import LlamaConfig, LlamaForCausalLM
from llmos.model.names import CONFIG, REQUIRED_FILES, WEIGHTS


class ModelFolderError(ValueError):
    """The folder is not a loadable model."""


def read_config(folder: Path) -> LlamaConfig:
    """The model's shape from `config.json`."""
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelFolderError(f"{folder} is not a model folder: missing {', '.join(missing)}")
    try:  # bounded before anything is allocated from it (llmos.model.limits)
        raw = read_folder_config(folder / CONFIG)
    except InvalidArgument as exc:
        raise ModelFolderError(f"{folder}: {exc}") from None
    if raw.get("model_type") != "llama":
        raise ModelFolderError(f"{folder}: model_type {raw.get('model_type')!r} is not supported")
    return LlamaConfig.from_hf(raw)


def load_model(folder: Path, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """Build the module and load its weights, checking every parameter is present."""
    config = read_config(folder)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state = load_file(str(folder / WEIGHTS))
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    model.load_state_dict(state, strict=not config.tie_word_embeddings, assign=True)
    model.rotary = type(model.rotary)(
        config.head_dim, config.max_position_embeddings, config.rope_theta
    )
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise ModelFolderError(f"{folder}: weights missing for {', '.join(leftover[:5])}")
    return model.to(dtype).eval()


def save_model(model: LlamaForCausalLM, folder: Path) -> None:
    """Write config and weights (tied embeddings stored once, as Hugging Face does)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(model.config.to_hf(), indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
