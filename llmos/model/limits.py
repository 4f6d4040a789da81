"""How large a model's config may say it is, checked before anything is allocated.

A config.json is the tenant's word: `max_position_embeddings = 2**34` sizes the rotary
tables and KV cache, a huge `hidden_size` or `vocab_size` the weights, and a worker or
trainer that believed it would try to allocate terabytes (and fail only after starving
everything beside it). So each size is bounded, the memory the weights and position
tables would take is estimated, and a config over either is refused naming its field —
by storage when the version is registered, by the gateway when it is deployed, and by
the worker and trainer again before they load it (a version registered earlier, or a
folder put in place by hand). Pure: imports no torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmos.errors import InvalidArgument
from llmos.training import parameter_count

#: a Hugging Face config.json is a few KiB; a bigger one is not a config
MAX_CONFIG_BYTES = 1 << 20
#: the largest size each field may name (well above any model LLM OS could serve)
BOUNDS: Mapping[str, int] = {
    "max_position_embeddings": 1 << 20,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 18,
    "num_hidden_layers": 1 << 10,
    "num_attention_heads": 1 << 10,
    "num_key_value_heads": 1 << 10,
    "head_dim": 1 << 10,
    "vocab_size": 1 << 21,
}
#: fp32 weights and rotary tables of the largest model a machine here could load
MAX_MODEL_BYTES = 512 << 30
FP32_BYTES = 4


def check_model_config(config: Mapping[str, Any], field: str = "config") -> None:
    """INVALID_ARGUMENT naming `field.<key>` if a size is not a positive integer within
    its bound, or if the model would not fit MAX_MODEL_BYTES."""
    sizes: dict[str, int] = {}
    for key, bound in BOUNDS.items():
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # a protobuf Struct holds numbers as doubles
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"{field}.{key}", f"must be a positive integer, not {value!r}")
        if value > bound:
            raise InvalidArgument(f"{field}.{key}", f"is {value}; at most {bound} is accepted")
        sizes[key] = value
    hidden = sizes.get("hidden_size", 0)
    weights = parameter_count(
        sizes.get("vocab_size", 0),
        hidden,
        sizes.get("intermediate_size", 4 * hidden),
        sizes.get("num_hidden_layers", 0),
    )
    heads = sizes.get("num_attention_heads", 1)
    head_dim = sizes.get("head_dim", hidden // heads if heads else 0)
    rotary = sizes.get("max_position_embeddings", 0) * head_dim  # cos and sin, half each
    needed = (weights + rotary) * FP32_BYTES
    if needed > MAX_MODEL_BYTES:
        raise InvalidArgument(
            field,
            f"describes a model of about {needed >> 30} GiB (weights and position tables); "
            f"at most {MAX_MODEL_BYTES >> 30} GiB is accepted",
        )


def too_large(size: int) -> str:
    """Why a config.json of `size` bytes is refused."""
    return f"is {size} bytes or more; a config.json may be at most {MAX_CONFIG_BYTES} bytes"


def parse_config(raw: bytes, field: str = "config.json") -> dict[str, Any]:
    """A config.json's object (`field` names the file in errors), bounded in size and
    checked (`check_model_config`)."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidArgument(field, too_large(len(raw)))
    try:
        config = json.loads(raw)
    except ValueError:
        raise InvalidArgument(field, "is not JSON") from None
    if not isinstance(config, dict):
        raise InvalidArgument(field, "is not a JSON object")
    check_model_config(config)
    return config


def read_folder_config(config_file: Path) -> dict[str, Any]:
    """A model folder's config.json, read no further than MAX_CONFIG_BYTES, checked."""
    with config_file.open("rb") as file:
        raw = file.read(MAX_CONFIG_BYTES + 1)
    return parse_config(raw)
