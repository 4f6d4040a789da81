"""Knowledge bases: a tenant's documents, chunked, embedded and indexed, kept in storage.

Each version of a knowledge base is one blob in the tenant's storage (encrypted at rest,
counted against its quota, in its backups like any blob), named by a dataset
`kb.<name>.v<version>`. A change writes version n+1 and then deletes the older ones;
storage refuses a second dataset of one name, so two gateways changing one knowledge
base at once cannot both write version n+1: the loser reads the winner's version and
applies its change again (optimistic concurrency, no lock to leak).

The blob: b"LLMOSKBS", an 8-byte length, a JSON header (description, embedding model,
documents), then the index (llmos.knowledge.index, its own self-describing format).
Vectors come from the platform's own Embed, with the knowledge base's embedding model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.apps.checks import (
    MAX_CALL_BYTES,
    MAX_DOCUMENT_BYTES,
    MAX_DOCUMENTS,
    check_description,
    check_document_name,
    check_knowledge_base,
)
from llmos.errors import AlreadyExists, FailedPrecondition, InvalidArgument, LLMOSError, NotFound
from llmos.knowledge.chunking import chunk_text
from llmos.knowledge.documents import extract_text
from llmos.knowledge.index import KnowledgeIndex
from llmos.links import Links
from llmos.model.names import DEFAULT_MODEL
from llmos.v1 import apps_pb2, storage_pb2, storage_pb2_grpc

MAGIC = b"LLMOSKBS"
_LENGTH = struct.Struct(">Q")
PREFIX = "kb."
_DATASET = re.compile(r"^kb\.([a-z0-9][a-z0-9_-]*)\.v(\d+)$")
#: texts per Embed call (the API's limit)
EMBED_BATCH = 64
#: tries of a change that lost a race with another gateway's change
CHANGE_TRIES = 4
#: knowledge bases kept decoded in memory, by blob digest (a version never changes)
CACHED = 32
PIECE = 3 << 20

Vectors = npt.NDArray[np.float32]
Embedder = Callable[[str, list[str]], Awaitable[Vectors]]


@dataclass
class KnowledgeBase:
    """One version of a knowledge base, decoded."""

    name: str
    description: str
    embedding_model: str
    version: int
    index: KnowledgeIndex
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    updated_at: float = 0.0

    def describe(self) -> apps_pb2.KnowledgeBase:
        counts = self.index.documents()
        answer = apps_pb2.KnowledgeBase(
            name=self.name,
            description=self.description,
            embedding_model=self.embedding_model,
            version=self.version,
            chunks=len(self.index),
        )
        answer.updated_at.FromNanoseconds(int(self.updated_at * 1e9))
        for name, facts in sorted(self.documents.items()):
            document = answer.documents.add(
                name=name,
                sha256=facts["sha256"],
                chunks=counts.get(name, 0),
                characters=facts["characters"],
            )
            document.added_at.FromNanoseconds(int(facts["added_at"] * 1e9))
        return answer

    def to_bytes(self) -> bytes:
        header = json.dumps(
            {
                "name": self.name,
                "description": self.description,
                "embedding_model": self.embedding_model,
                "version": self.version,
                "documents": self.documents,
                "updated_at": self.updated_at,
            }
        ).encode()
        return MAGIC + _LENGTH.pack(len(header)) + header + self.index.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> KnowledgeBase:
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LENGTH.size:
            raise ValueError("not a knowledge base")
        (length,) = _LENGTH.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + _LENGTH.size
        header = json.loads(data[start : start + length])
        index = KnowledgeIndex.from_bytes(data[start + length :])
        return cls(
            header["name"],
            header["description"],
            header["embedding_model"],
            int(header["version"]),
            index,
            header["documents"],
            float(header["updated_at"]),
        )


def dataset_name(name: str, version: int) -> str:
    return f"{PREFIX}{name}.v{version}"


class _NoDeadline:
    """Storage calls made for a caller whose own deadline the gateway enforces."""

    def time_remaining(self) -> float:
        return 600.0


class KnowledgeBases:
    """Create, read, change and delete a tenant's knowledge bases."""

    def __init__(self, links: Links, embed: Embedder) -> None:
        self._storage = links.to("storage", storage_pb2_grpc.StorageStub)
        self._embed = embed
        self._cache: OrderedDict[str, KnowledgeBase] = OrderedDict()

    async def _ask(self, method: str, request: Any) -> Any:
        return await self._storage.ask(method, request, _NoDeadline())

    async def _versions(self, tenant: str) -> dict[str, list[storage_pb2.Dataset]]:
        """Every knowledge base's datasets, newest version first."""
        listing = await self._ask("ListDatasets", storage_pb2.ListDatasetsRequest(tenant=tenant))
        found: dict[str, list[tuple[int, storage_pb2.Dataset]]] = {}
        for dataset in listing.datasets:
            match = _DATASET.match(dataset.name)
            if match:
                found.setdefault(match.group(1), []).append((int(match.group(2)), dataset))
        return {
            name: [d for _, d in sorted(versions, key=lambda v: -v[0])]
            for name, versions in found.items()
        }

    async def _read(self, tenant: str, dataset: storage_pb2.Dataset) -> KnowledgeBase:
        cached = self._cache.get(f"{tenant}/{dataset.sha256}")
        if cached is not None:
            self._cache.move_to_end(f"{tenant}/{dataset.sha256}")
            return cached
        data = bytearray()
        request = storage_pb2.DownloadBlobRequest(tenant=tenant, sha256=dataset.sha256)
        async for chunk in self._storage.stream("DownloadBlob", request, _NoDeadline()):
            data.extend(chunk.data)
        if hashlib.sha256(data).hexdigest() != dataset.sha256:
            raise FailedPrecondition(f"knowledge base {dataset.name!r} did not match its digest")
        base = await asyncio.to_thread(KnowledgeBase.from_bytes, bytes(data))
        self._cache[f"{tenant}/{dataset.sha256}"] = base
        while len(self._cache) > CACHED:
            self._cache.popitem(last=False)
        return base

    async def get(self, tenant: str, name: str, field: str = "name") -> KnowledgeBase:
        """The newest version of the tenant's knowledge base `name`. A version can be
        deleted between listing and reading it (a change just wrote the next): the newer
        one is read then."""
        check_knowledge_base(name, field)
        for attempt in range(CHANGE_TRIES):
            versions = (await self._versions(tenant)).get(name)
            if not versions:
                break
            try:
                return await self._read(tenant, versions[0])
            except NotFound:
                if attempt == CHANGE_TRIES - 1:
                    raise
        raise NotFound(f"knowledge base {name!r} does not exist")

    async def every(self, tenant: str) -> list[KnowledgeBase]:
        return [
            await self._read(tenant, versions[0])
            for _, versions in sorted((await self._versions(tenant)).items())
        ]

    async def create(
        self, tenant: str, name: str, description: str, embedding_model: str
    ) -> KnowledgeBase:
        """An empty knowledge base; its vectors' size is the embedding model's."""
        check_knowledge_base(name)
        check_description(description)
        if name in await self._versions(tenant):
            raise AlreadyExists(f"knowledge base {name!r} already exists")
        model = embedding_model or DEFAULT_MODEL
        probe = await self._embed(model, ["knowledge base"])
        base = KnowledgeBase(
            name, description, model, 1, KnowledgeIndex(int(probe.shape[1])), {}, time.time()
        )
        try:
            await self._write(tenant, base)
        except FailedPrecondition:  # created meanwhile by another call
            raise AlreadyExists(f"knowledge base {name!r} already exists") from None
        return base

    async def delete(self, tenant: str, name: str) -> KnowledgeBase:
        base = await self.get(tenant, name)
        for dataset in (await self._versions(tenant)).get(name, []):
            await self._forget(tenant, dataset.name)
        return base

    async def add(
        self, tenant: str, name: str, documents: Sequence[apps_pb2.Document]
    ) -> KnowledgeBase:
        """Add (or replace) documents: extracted and chunked first (bad input is refused
        before any work), embedded, then written as the next version."""
        check_knowledge_base(name, "knowledge_base")
        prepared = await asyncio.to_thread(_prepare, documents)
        for _ in range(CHANGE_TRIES):
            base = await self.get(tenant, name, "knowledge_base")
            index = KnowledgeIndex.from_bytes(base.index.to_bytes())  # cached: never mutate
            facts = dict(base.documents)
            for document in prepared:
                vectors = await self._vectors(base.embedding_model, document.chunks)
                index.add_document(document.name, document.chunks, vectors)
                facts[document.name] = document.facts
            changed = KnowledgeBase(
                name, base.description, base.embedding_model, base.version + 1, index, facts,
                time.time(),
            )  # fmt: skip
            try:
                await self._write(tenant, changed)
            except FailedPrecondition:  # another gateway wrote this version first
                continue
            for older in (await self._versions(tenant)).get(name, [])[1:]:
                await self._forget(tenant, older.name)
            return changed
        raise FailedPrecondition(
            f"knowledge base {name!r} changed {CHANGE_TRIES} times while adding; try again"
        )

    async def _vectors(self, model: str, chunks: Sequence[Any]) -> Vectors:
        texts = [chunk.text for chunk in chunks]
        parts = [
            await self._embed(model, texts[start : start + EMBED_BATCH])
            for start in range(0, len(texts), EMBED_BATCH)
        ]
        return np.concatenate(parts)

    async def _write(self, tenant: str, base: KnowledgeBase) -> None:
        data = await asyncio.to_thread(base.to_bytes)
        blob = await self._ask("UploadBlob", _upload(tenant, data))
        try:
            await self._ask(
                "CreateDataset",
                storage_pb2.CreateDatasetRequest(
                    tenant=tenant,
                    name=dataset_name(base.name, base.version),
                    sha256=blob.sha256,
                    description=f"knowledge base {base.name}, version {base.version}",
                ),
            )
        except FailedPrecondition:  # the version exists: drop the blob nothing names
            with contextlib.suppress(LLMOSError):
                request = storage_pb2.DownloadBlobRequest(tenant=tenant, sha256=blob.sha256)
                await self._ask("DeleteBlob", request)
            raise

    async def _forget(self, tenant: str, dataset: str) -> None:
        with contextlib.suppress(NotFound):  # deleted meanwhile by another change
            await self._ask(
                "DeleteDataset", storage_pb2.GetDatasetRequest(tenant=tenant, name=dataset)
            )


@dataclass
class _Prepared:
    name: str
    chunks: list[Any]
    facts: dict[str, Any]


def _prepare(documents: Sequence[apps_pb2.Document]) -> list[_Prepared]:
    """Every document's text and chunks, or INVALID_ARGUMENT naming the first bad one."""
    if not documents:
        raise InvalidArgument("documents", "must contain at least one document")
    if len(documents) > MAX_DOCUMENTS:
        raise InvalidArgument("documents", f"at most {MAX_DOCUMENTS} documents per call")
    if sum(len(document.content) for document in documents) > MAX_CALL_BYTES:
        raise InvalidArgument(
            "documents", f"hold more than {MAX_CALL_BYTES >> 20} MiB; add them in several calls"
        )
    prepared, names = [], set()
    for index, document in enumerate(documents):
        field_name = f"documents[{index}]"
        check_document_name(document.name, f"{field_name}.name")
        if document.name in names:
            raise InvalidArgument(f"{field_name}.name", f"repeats {document.name!r}")
        names.add(document.name)
        if len(document.content) > MAX_DOCUMENT_BYTES:
            raise InvalidArgument(
                f"{field_name}.content", f"is larger than {MAX_DOCUMENT_BYTES >> 20} MiB"
            )
        text = extract_text(document.name, document.content, document.content_type, field_name)
        facts = {
            "sha256": hashlib.sha256(document.content).hexdigest(),
            "characters": len(text),
            "added_at": time.time(),
        }
        prepared.append(_Prepared(document.name, chunk_text(text), facts))
    return prepared


async def _upload(tenant: str, data: bytes) -> AsyncIterator[storage_pb2.UploadBlobRequest]:
    yield storage_pb2.UploadBlobRequest(
        start=storage_pb2.UploadStart(tenant=tenant, upload_id=uuid.uuid4().hex, size=len(data))
    )
    for offset in range(0, len(data), PIECE):
        yield storage_pb2.UploadBlobRequest(data=data[offset : offset + PIECE], offset=offset)
