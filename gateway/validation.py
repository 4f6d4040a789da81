"""Checks on public inference requests, before any work is sent. Pure logic, no I/O.

Each failure names the request field as the caller wrote it (`params.top_p`,
`messages[2].role`). Limits that depend on the model (the context window) are checked
by the engine and come back the same way.
"""

from __future__ import annotations

from llmos.errors import InvalidArgument
from llmos.generation import SamplingParams, sampling_params_from_proto
from llmos.model.names import CHAT_ROLES as ROLES
from llmos.v1 import inference_pb2

MAX_PROMPT_CHARS = 200_000
MAX_NEW_TOKENS = 4096
MAX_MESSAGES = 256
MAX_EMBED_INPUTS = 64
MAX_EMBED_CHARS = 20_000
MAX_LABELS = 32
MAX_LABEL_CHARS = 200
#: classification scores the whole text once per label, so its text is held far shorter
#: than a prompt (the worker also bounds it in tokens: engine/scoring.py)
MAX_CLASSIFY_TEXT_CHARS = 4_000


def checked_params(params: inference_pb2.GenerationParams) -> SamplingParams:
    """Sampling parameters with defaults, refusing impossible values."""
    sampling = sampling_params_from_proto(params)
    try:
        sampling.validate(MAX_NEW_TOKENS, "are allowed per request")
    except InvalidArgument as exc:
        raise InvalidArgument(f"params.{exc.field}", exc.reason) from None
    return sampling


def check_prompt(prompt: str) -> None:
    """A completion prompt: present and of sane size."""
    if not prompt.strip():
        raise InvalidArgument("prompt", "must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidArgument("prompt", f"is longer than {MAX_PROMPT_CHARS} characters")


def check_messages(messages: list[inference_pb2.ChatMessage]) -> None:
    """A chat transcript: known roles, something to answer, bounded size."""
    if not messages:
        raise InvalidArgument("messages", "must contain at least one message")
    if len(messages) > MAX_MESSAGES:
        raise InvalidArgument("messages", f"at most {MAX_MESSAGES} messages")
    total = 0
    for index, message in enumerate(messages):
        if message.role not in ROLES:
            raise InvalidArgument(f"messages[{index}].role", f"must be one of {', '.join(ROLES)}")
        total += len(message.content)
    if not any(m.content.strip() for m in messages):
        raise InvalidArgument("messages", "all messages are empty")
    if total > MAX_PROMPT_CHARS:
        raise InvalidArgument("messages", f"are longer than {MAX_PROMPT_CHARS} characters in all")


def check_embed_inputs(inputs: list[str]) -> None:
    """Texts to embed: 1..64 non-empty strings."""
    check_texts(inputs, "inputs", MAX_EMBED_INPUTS, MAX_EMBED_CHARS)


def check_texts(texts: list[str], field: str, most: int, most_chars: int) -> None:
    """1..`most` non-empty texts of at most `most_chars` characters each (embeddings,
    entities, translations)."""
    if not texts:
        raise InvalidArgument(field, "must contain at least one text")
    if len(texts) > most:
        raise InvalidArgument(field, f"holds {len(texts)} texts; at most {most} per call")
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidArgument(f"{field}[{index}]", "must not be empty")
        if len(text) > most_chars:
            raise InvalidArgument(
                f"{field}[{index}]", f"is {len(text)} characters; at most {most_chars}"
            )


def check_classification(text: str, labels: list[str]) -> None:
    """A text of at most 4,000 characters and 2..32 distinct labels of 1..200 characters.

    Over-long text is refused, not truncated: a cut text would be classified on what it
    no longer says. Its cost is text x labels, hence the tighter bound than a prompt's."""
    if not text.strip():
        raise InvalidArgument("text", "must not be empty")
    if len(text) > MAX_CLASSIFY_TEXT_CHARS:
        raise InvalidArgument(
            "text",
            f"is {len(text)} characters; classification accepts at most "
            f"{MAX_CLASSIFY_TEXT_CHARS} (it scores the text once per label)",
        )
    if not 2 <= len(labels) <= MAX_LABELS:
        raise InvalidArgument("labels", f"give between 2 and {MAX_LABELS} labels")
    for index, label in enumerate(labels):
        if not label.strip() or len(label) > MAX_LABEL_CHARS:
            raise InvalidArgument(f"labels[{index}]", f"must be 1 to {MAX_LABEL_CHARS} characters")
    if len(set(labels)) != len(labels):
        raise InvalidArgument("labels", "must be distinct")
