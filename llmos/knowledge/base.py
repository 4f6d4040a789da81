"""One version of a knowledge base as it is stored: what it is, its documents, its index.

The blob: b"LLMOSKBS", an 8-byte big-endian length, a JSON header (name, description,
embedding model, version, documents with their digest, size and time), then the index
(index.py, its own self-describing format). Every field is checked when read back: a
blob is data from storage, and a malformed one is refused with a sentence (ValueError),
never half-read.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from llmos.knowledge.chunking import Chunk
from llmos.knowledge.index import KnowledgeIndex

MAGIC = b"LLMOSKBS"
#: storage datasets named `kb.<name>.v<version>` are knowledge bases
DATASET_PREFIX = "kb."
_LENGTH = struct.Struct(">Q")


@dataclass(frozen=True)
class DocumentFacts:
    """What a knowledge base remembers of a document beside its passages."""

    sha256: str
    characters: int
    added_at: float


@dataclass
class KnowledgeBase:
    """One version of a knowledge base, decoded."""

    name: str
    description: str
    embedding_model: str
    version: int
    index: KnowledgeIndex
    documents: dict[str, DocumentFacts] = field(default_factory=dict)
    updated_at: float = 0.0

    def changed(
        self, added: list[tuple[str, list[Chunk], Any, DocumentFacts]], now: float
    ) -> KnowledgeBase:
        """The next version, with `added` documents (name, passages, their vectors,
        facts) in place of any of the same name. This version is left as it is: it may
        be cached and read by other calls."""
        index = KnowledgeIndex.from_bytes(self.index.to_bytes())
        documents = dict(self.documents)
        for name, chunks, vectors, facts in added:
            index.add_document(name, chunks, vectors)
            documents[name] = facts
        return KnowledgeBase(
            self.name, self.description, self.embedding_model, self.version + 1, index,
            documents, now,
        )  # fmt: skip

    def to_bytes(self) -> bytes:
        header = json.dumps(
            {
                "name": self.name,
                "description": self.description,
                "embedding_model": self.embedding_model,
                "version": self.version,
                "documents": {
                    name: [facts.sha256, facts.characters, facts.added_at]
                    for name, facts in self.documents.items()
                },
                "updated_at": self.updated_at,
            }
        ).encode()
        return MAGIC + _LENGTH.pack(len(header)) + header + self.index.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> KnowledgeBase:
        start = len(MAGIC) + _LENGTH.size
        if not data.startswith(MAGIC) or len(data) < start:
            raise ValueError("the blob is not a knowledge base")
        (length,) = _LENGTH.unpack_from(data, len(MAGIC))
        if start + length > len(data):
            raise ValueError("the knowledge base's header is cut short")
        try:
            header = json.loads(data[start : start + length])
            base = cls(
                _text(header, "name"),
                _text(header, "description"),
                _text(header, "embedding_model"),
                _number(header, "version", int),
                KnowledgeIndex.from_bytes(data[start + length :]),
                _documents(header.get("documents")),
                _number(header, "updated_at", float),
            )
        except (TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
            raise ValueError(f"the knowledge base's header is malformed: {exc}") from None
        if set(base.documents) != set(base.index.documents()):
            raise ValueError("the knowledge base's documents and passages disagree")
        return base


def _text(header: dict[str, Any], key: str) -> str:
    value = header[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be text")
    return value


def _number(header: dict[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} must be a number")
    return kind(value)


def _documents(raw: Any) -> dict[str, DocumentFacts]:
    if not isinstance(raw, dict):
        raise TypeError("documents must be an object")
    documents = {}
    for name, facts in raw.items():
        sha256, characters, added_at = facts
        if not isinstance(sha256, str) or not isinstance(characters, int):
            raise TypeError(f"the facts of {name!r} are malformed")
        documents[str(name)] = DocumentFacts(sha256, characters, float(added_at))
    return documents
