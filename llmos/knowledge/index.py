"""The searchable index of one knowledge base: passages found by meaning and by words.

Dense search (cosine similarity of Embed API vectors, exact inner product in faiss) finds
paraphrases; BM25 (`lexical`) finds the exact terms customers type. The two rankings are
merged by reciprocal rank fusion (Cormack, Clarke and Buettcher, SIGIR 2009): each
passage scores the sum of 1 / (60 + rank) over the rankings it appears in. RRF needs no
calibration between cosine and BM25 scales, which have nothing in common.

`relevant` is how the assistant decides to say "I don't know" instead of answering from
a passage that only happened to rank first: see its docstring for the rule.

An index travels as one self-describing blob (`to_bytes`): the magic b"LLMOSKB1", an
8-byte big-endian length, a JSON header (dimension, next id, every passage with its
text), then faiss's own serialization of the vectors. No pickle: a blob read back from
storage is data, never code.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from llmos.knowledge.chunking import Chunk
from llmos.knowledge.lexical import Bm25, content_words, tokens

# A passage sharing no word with the question still counts when its meaning is this
# close; below it, embeddings of unrelated short texts overlap too much to trust alone.
DENSE_RELEVANT = 0.9
RRF_K = 60  # the constant of the RRF paper; it damps the weight of the very top ranks
CANDIDATES_PER_RESULT = 4  # each ranking contributes its top 4k candidates to the fusion
MAGIC = b"LLMOSKB1"
_LENGTH = struct.Struct(">Q")
_CHUNK_FIELDS = {"id", "document", "number", "start", "end", "text"}


@dataclass(frozen=True)
class IndexedChunk:
    """A passage as stored: which document it came from and where in its text."""

    id: int
    document: str
    number: int  # position among the document's chunks, from 0
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Hit:
    """A search result: the fused score orders results; the parts explain them."""

    chunk: IndexedChunk
    score: float  # reciprocal rank fusion of the two rankings
    dense: float  # cosine similarity of question and passage
    lexical: float  # BM25 score of the passage for the question (0: no shared term)


def relevant(question: str, hit: Hit) -> bool:
    """Whether `hit` may be used to answer `question`.

    Yes when the passage shares a content word with the question (not a stopword, at
    least three characters once stemmed), or when its cosine similarity is at least
    DENSE_RELEVANT. Search always returns its best k, even for a question the knowledge
    base knows nothing about; this rule is what turns "nothing related" into "I don't know".
    """
    if hit.dense >= DENSE_RELEVANT:
        return True
    return not content_words(question).isdisjoint(content_words(hit.chunk.text))


class KnowledgeIndex:
    """Passages of one knowledge base's documents, searchable by vector and by words."""

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"an index needs a vector dimension of at least 1, not {dim}")
        self.dim = dim
        # IDMap2 so that one document's passages can be removed by id when it is replaced.
        self._dense = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lexical = Bm25()
        self._chunks: dict[int, IndexedChunk] = {}
        self._by_document: dict[str, list[int]] = {}
        self._next_id = 0  # ids are never reused, so a stale id can never name a new passage

    def __len__(self) -> int:
        return len(self._chunks)

    def documents(self) -> dict[str, int]:
        """Each document's name and its number of passages."""
        return {name: len(ids) for name, ids in self._by_document.items()}

    def add_document(self, document: str, chunks: list[Chunk], vectors: npt.ArrayLike) -> None:
        """Index `document`'s passages (one vector per chunk), replacing any it had."""
        matrix = _unit_rows(vectors, self.dim)
        if not chunks:
            raise ValueError(f"document {document!r} has no chunks to index")
        if len(matrix) != len(chunks):
            raise ValueError(f"{len(chunks)} chunks came with {len(matrix)} vectors")
        self.remove_document(document)
        ids = np.arange(self._next_id, self._next_id + len(chunks), dtype=np.int64)
        self._next_id += len(chunks)
        self._dense.add_with_ids(matrix, ids)
        stored = [
            IndexedChunk(int(i), document, n, c.start, c.end, c.text)
            for n, (i, c) in enumerate(zip(ids, chunks, strict=True))
        ]
        self._keep(stored)

    def remove_document(self, document: str) -> bool:
        """Forget `document`'s passages; False if it was not indexed."""
        ids = self._by_document.pop(document, None)
        if ids is None:
            return False
        self._dense.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
        for i in ids:
            del self._chunks[i]
            self._lexical.remove(i)
        return True

    def search(self, question: str, vector: npt.ArrayLike, k: int = 5) -> list[Hit]:
        """The `k` passages best matching `question` (text) and its vector, best first."""
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        query = _unit_rows(vector, self.dim)
        if len(query) != 1:
            raise ValueError(f"search takes one question vector, not {len(query)}")
        if not self._chunks:
            return []
        pool = CANDIDATES_PER_RESULT * k
        found_scores, found_ids = self._dense.search(query, min(pool, len(self._chunks)))
        dense_ranking = _ranked(
            {int(i): float(s) for i, s in zip(found_ids[0], found_scores[0], strict=True) if i >= 0}
        )[:pool]
        bm25 = self._lexical.scores(tokens(question))
        lexical_ranking = _ranked(bm25)[:pool]
        fused: dict[int, float] = {}
        for ranking in (dense_ranking, lexical_ranking):
            for rank, i in enumerate(ranking, start=1):
                fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank)
        best = _ranked(fused)[:k]
        # Cosine for every hit, also those only BM25 found: `relevant` needs it.
        cosines = self._dense.reconstruct_batch(np.asarray(best, dtype=np.int64)) @ query[0]
        return [
            Hit(self._chunks[i], fused[i], float(cosine), bm25.get(i, 0.0))
            for i, cosine in zip(best, cosines, strict=True)
        ]

    def to_bytes(self) -> bytes:
        """The whole index as one blob, for `from_bytes` to restore exactly."""
        header = {
            "dim": self.dim,
            "next_id": self._next_id,
            "chunks": [asdict(chunk) for chunk in self._chunks.values()],
        }
        encoded = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
        vectors = faiss.serialize_index(self._dense).tobytes()
        return MAGIC + _LENGTH.pack(len(encoded)) + encoded + vectors

    @classmethod
    def from_bytes(cls, data: bytes) -> KnowledgeIndex:
        """The index `to_bytes` wrote; ValueError for anything else."""
        header, vectors = _split(data)
        try:
            index = cls(_whole(header, "dim"))
            index._next_id = _whole(header, "next_id")
            if not isinstance(header.get("chunks"), list):
                raise ValueError("'chunks' is not a list")
            chunks = [_stored_chunk(fields) for fields in header["chunks"]]
        except (TypeError, ValueError) as error:
            raise ValueError(f"the knowledge index header is malformed: {error}") from None
        dense = _dense_index(vectors, index.dim)
        stored = faiss.vector_to_array(dense.id_map)
        ids = [chunk.id for chunk in chunks]
        if sorted(stored.tolist()) != sorted(ids) or len(set(ids)) != len(ids):
            raise ValueError("the knowledge index's vectors do not match its passages")
        if ids and max(ids) >= index._next_id:
            raise ValueError("the knowledge index's next id is behind its passages' ids")
        index._dense = dense
        index._keep(chunks)
        return index

    def _keep(self, chunks: list[IndexedChunk]) -> None:
        for chunk in chunks:
            self._chunks[chunk.id] = chunk
            self._by_document.setdefault(chunk.document, []).append(chunk.id)
            self._lexical.add(chunk.id, chunk.text)


def _ranked(scores: dict[int, float]) -> list[int]:
    """Ids by score, best first; equal scores by id, so results never depend on luck."""
    return sorted(scores, key=lambda i: (-scores[i], i))


def _unit_rows(vectors: npt.ArrayLike, dim: int) -> npt.NDArray[np.float32]:
    """Vectors as float32 rows of length 1, so that inner product is cosine."""
    matrix = np.array(vectors, dtype=np.float32, ndmin=2)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ValueError(f"vectors must have dimension {dim}, not shape {np.shape(vectors)}")
    if not np.isfinite(matrix).all():
        raise ValueError("vectors must be finite numbers")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # The Embed API already normalises; this guards the threshold against a caller that
    # does not. A zero vector stays zero: similar to nothing.
    return np.ascontiguousarray(matrix / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the faiss bytes of a blob, or ValueError if it is not one."""
    prefix = len(MAGIC) + _LENGTH.size
    if len(data) < prefix or not data.startswith(MAGIC):
        raise ValueError("the data is not a knowledge index (no LLMOSKB1 header)")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if length > len(data) - prefix:
        raise ValueError("the knowledge index is truncated (its header runs past the end)")
    try:
        header = json.loads(data[prefix : prefix + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"the knowledge index header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise ValueError("the knowledge index header is not a JSON object")
    return header, data[prefix + length :]


def _whole(fields: dict[str, Any], name: str) -> int:
    """A non-negative integer field of a header; JSON itself says nothing about types."""
    if name not in fields:
        raise ValueError(f"{name!r} is missing")
    value = fields[name]
    if type(value) is not int or value < 0:  # bool is an int subclass: not accepted
        raise ValueError(f"{name!r} is {value!r}, not a whole number")
    return value


def _stored_chunk(fields: dict[str, Any]) -> IndexedChunk:
    """One passage from a header, every field checked."""
    if not isinstance(fields, dict) or set(fields) != _CHUNK_FIELDS:
        raise ValueError(f"a passage must have exactly the fields {sorted(_CHUNK_FIELDS)}")
    if not isinstance(fields["document"], str) or not isinstance(fields["text"], str):
        raise ValueError(f"passage {fields['id']!r} has a document or text that is not a string")
    return IndexedChunk(
        _whole(fields, "id"),
        fields["document"],
        _whole(fields, "number"),
        _whole(fields, "start"),
        _whole(fields, "end"),
        fields["text"],
    )


def _dense_index(data: bytes, dim: int) -> faiss.IndexIDMap2:
    """The faiss part of a blob, checked to be the kind of index this module writes."""
    try:
        dense = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError:  # faiss's message is about its C++ internals, not this blob
        raise ValueError("the knowledge index's vectors are damaged or not a faiss index") from None
    if not isinstance(dense, faiss.IndexIDMap2):
        raise ValueError("the knowledge index's vectors are not an id-mapped faiss index")
    if dense.d != dim or dense.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError("the knowledge index's vectors do not match its header")
    return dense
