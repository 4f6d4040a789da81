"""Import a GGUF file (llama.cpp's format) into a Hugging Face-layout model folder.

Quantized tensors are dequantized to float32 with the `gguf` package; the query and key
projections are un-permuted (llama.cpp reorders their rows for its interleaved RoPE);
the BPE tokenizer, special tokens and chat template are rebuilt from the metadata.
`python -m llmos.model.gguf_import FILE OUT` or `llmos models import --gguf FILE`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize
from safetensors.torch import save_file

from llmos.model.llama import LlamaConfig
from llmos.model.names import (
    CONFIG,
    GENERATION_CONFIG,
    TOKENIZER,
    TOKENIZER_CONFIG,
    WEIGHTS,
)

#: GGUF tensor name (per block `{i}`) -> Hugging Face parameter name.
TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}

# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte.
CONTROL, USER_DEFINED = 3, 4

# The `tokenizer.ggml.pre` names whose pre-tokenizer splits digits one by one before
# the GPT-2 byte-level regex (as SmolLM's Hugging Face tokenizer does).
DIGIT_SPLITTING_PRE = {"smollm", "llama3", "llama-bpe", "qwen2", "deepseek-llm"}


class GGUFImportError(ValueError):
    """The file is not a GGUF model this importer understands."""


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    found = reader.fields.get(key)
    if found is None:
        return default
    if found.types and found.types[0] == GGUFValueType.ARRAY:
        return found.contents()
    return found.contents()


def read_config(reader: GGUFReader) -> LlamaConfig:
    """The model's shape from GGUF metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise GGUFImportError(f"architecture {arch!r} is not supported (only llama)")
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    heads = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    return LlamaConfig(
        vocab_size=int(_field(reader, "llama.vocab_size", len(tokens))),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        head_dim=int(_field(reader, "llama.rope.dimension_count", hidden // heads)),
    )


def unpermute_rope_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's row order for q/k projections (interleaved -> half-split RoPE)."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def read_weights(reader: GGUFReader, config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32 under its Hugging Face name."""
    patterns = {}
    for gguf_name, hf_name in TENSOR_NAMES.items():
        for i in range(config.num_hidden_layers) if "{i}" in gguf_name else [None]:
            patterns[gguf_name.format(i=i)] = hf_name.format(i=i)
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = patterns.get(tensor.name)
        if name is None:
            raise GGUFImportError(f"unexpected tensor {tensor.name!r}")
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims fastest-first
        weight = torch.from_numpy(np.array(values.reshape(shape), copy=not values.flags.writeable))
        if name.endswith("q_proj.weight"):
            weight = unpermute_rope_rows(weight, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weight = unpermute_rope_rows(weight, config.num_key_value_heads)
        state[name] = weight.contiguous()
    missing = set(patterns.values()) - set(state) - {"lm_head.weight"}
    if missing:
        raise GGUFImportError(f"tensors missing: {', '.join(sorted(missing)[:5])}")
    return state


def tokenizer_files(reader: GGUFReader, config: LlamaConfig) -> dict[str, dict[str, Any]]:
    """tokenizer.json, tokenizer_config.json and generation_config.json contents."""
    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFImportError(f"tokenizer model {kind!r} is not supported (only gpt2 BPE)")
    tokens: list[str] = list(_field(reader, "tokenizer.ggml.tokens"))
    types: list[int] = list(_field(reader, "tokenizer.ggml.token_type"))
    merges: list[str] = list(_field(reader, "tokenizer.ggml.merges"))
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    pre_tokenizer: dict[str, Any] = byte_level
    if pre in DIGIT_SPLITTING_PRE:
        pre_tokenizer = {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level],
        }
    added = [
        {
            "id": i,
            "content": token,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": types[i] == CONTROL,
        }
        for i, token in enumerate(tokens)
        if types[i] in (CONTROL, USER_DEFINED)
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {token: i for i, token in enumerate(tokens)},
            "merges": [merge.split(" ", 1) for merge in merges],
        },
    }

    def token(key: str) -> str | None:
        index = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return None if index is None else tokens[int(index)]

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        "model_max_length": config.max_position_embeddings,
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "clean_up_tokenization_spaces": False,
    }
    generation_config = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }
    return {
        TOKENIZER: tokenizer,
        TOKENIZER_CONFIG: tokenizer_config,
        GENERATION_CONFIG: generation_config,
    }


def import_gguf(gguf_path: Path, out_dir: Path) -> LlamaConfig:
    """Write the model folder for `gguf_path` into `out_dir` (atomically: all or nothing)."""
    reader = GGUFReader(str(gguf_path))
    config = read_config(reader)
    state = read_weights(reader, config)
    files = tokenizer_files(reader, config)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    hf_config = config.to_hf()
    hf_config["llmos_source"] = {
        "format": "gguf",
        "file": gguf_path.name,
        "file_type": _field(reader, "general.file_type"),
    }
    (staging / CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")
    save_file(state, str(staging / WEIGHTS), metadata={"format": "pt"})
    for name, content in files.items():
        (staging / name).write_text(json.dumps(content, ensure_ascii=False) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return config


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    config = import_gguf(args.gguf, args.out)
    print(f"imported {args.gguf.name}: {config.parameter_count:,} parameters -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
