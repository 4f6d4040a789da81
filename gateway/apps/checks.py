"""What the applications accept: one place for their limits and the sentences naming the
field at fault (INVALID_ARGUMENT before any work is placed)."""

from __future__ import annotations

import re

from gateway import validation
from llmos.errors import InvalidArgument

#: texts per ExtractEntities / Translate call, and characters per text
MAX_TEXTS = 64
MAX_TEXT_CHARS = 20_000
#: custom entity labels per call (answered by the chat model, one prompt per text)
MAX_LABELS = 16
MAX_LABEL_CHARS = 40
#: characters of a text the chat model extracts from or translates (a prompt's budget)
MAX_LLM_TEXT_CHARS = 4_000
#: a knowledge base's name: a storage name segment
KNOWLEDGE_BASE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
MAX_DESCRIPTION_CHARS = 500
MAX_DOCUMENTS = 32
MAX_DOCUMENT_BYTES = 8 << 20
#: documents of one AddDocuments call together (the gateway takes 64 MiB messages)
MAX_CALL_BYTES = 32 << 20
MAX_DOCUMENT_NAME_CHARS = 200
MAX_QUESTION_CHARS = 2_000
MAX_TOP_K = 20
CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_texts(texts: list[str], limit_chars: int = MAX_TEXT_CHARS) -> None:
    """1..MAX_TEXTS non-empty texts of at most `limit_chars` characters each."""
    validation.check_texts(texts, "texts", MAX_TEXTS, limit_chars)


def check_labels(labels: list[str]) -> list[str]:
    """Custom entity labels: distinct words, upper-cased (`product` and `PRODUCT` are one)."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument("labels", f"at most {MAX_LABELS} labels per call")
    seen: list[str] = []
    for index, label in enumerate(labels):
        name = label.strip().upper()
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name) or len(name) > MAX_LABEL_CHARS:
            raise InvalidArgument(
                f"labels[{index}]",
                f"must be a word of letters, digits and _ (at most {MAX_LABEL_CHARS}), "
                "such as PRODUCT",
            )
        if name in seen:
            raise InvalidArgument(f"labels[{index}]", f"repeats {name!r}")
        seen.append(name)
    return seen


def check_knowledge_base(name: str, field: str = "name") -> str:
    """A knowledge base's name."""
    if not KNOWLEDGE_BASE_NAME.match(name):
        raise InvalidArgument(
            field, "must be 1 to 48 lowercase letters, digits, - and _, starting with a letter "
            "or digit",
        )  # fmt: skip
    return name


def check_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidArgument("description", f"at most {MAX_DESCRIPTION_CHARS} characters")


def check_document_name(name: str, field: str) -> None:
    if not name.strip() or len(name) > MAX_DOCUMENT_NAME_CHARS or "/" in name or "\\" in name:
        raise InvalidArgument(
            field, f"must be a file name of 1 to {MAX_DOCUMENT_NAME_CHARS} characters, no slashes"
        )


def check_question(question: str, top_k: int, conversation_id: str, max_tokens: int) -> int:
    """The question, the passages wanted (0: 5), the conversation id if any, and the
    answer's length (checked here too, before any passage is sent: once the answer has
    begun, an error can no longer be the call's status)."""
    if not 0 <= max_tokens <= validation.MAX_NEW_TOKENS:
        raise InvalidArgument(
            "max_tokens", f"must be between 1 and {validation.MAX_NEW_TOKENS} (0: 256)"
        )
    if not question.strip():
        raise InvalidArgument("question", "must not be empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise InvalidArgument("question", f"is longer than {MAX_QUESTION_CHARS} characters")
    if not 0 <= top_k <= MAX_TOP_K:
        raise InvalidArgument("top_k", f"must be between 1 and {MAX_TOP_K} (0: 5)")
    if conversation_id and not CONVERSATION_ID.match(conversation_id):
        raise InvalidArgument(
            "conversation_id", "must be 1 to 64 letters, digits, - and _ (as Ask returned it)"
        )
    return top_k or 5
