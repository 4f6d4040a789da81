"""Knowledge bases: a tenant's documents, chunked, embedded and indexed, kept in storage.

Each version of a knowledge base is one blob in the tenant's storage (encrypted at rest,
counted against its quota, in its backups like any blob), named by a dataset
`kb.<name>.v<version>`. A change writes version n+1 and then deletes the older ones;
storage refuses a second dataset of one name, so two gateways changing one knowledge
base at once cannot both write version n+1: the loser reads the winner's version and
applies its change again (optimistic concurrency, no lock to leak).

The blob's format is llmos.knowledge.base's. Vectors come from the platform's own Embed,
with the knowledge base's embedding model. Only the gateway names datasets `kb.*` (the
public storage API refuses those names), so every blob read here was written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
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
from llmos.knowledge.base import DATASET_PREFIX, DocumentFacts, KnowledgeBase
from llmos.knowledge.chunking import Chunk, chunk_text
from llmos.knowledge.documents import extract_text
from llmos.knowledge.index import KnowledgeIndex
from llmos.links import Links, NoDeadline
from llmos.modelstore import UPLOAD_PIECE, upload_requests
from llmos.v1 import apps_pb2, storage_pb2, storage_pb2_grpc

log = logging.getLogger("llmos.gateway.knowledge")

_DATASET = re.compile(r"^kb\.([a-z0-9][a-z0-9_-]*)\.v(\d+)$")
#: texts per Embed call (the API's limit)
EMBED_BATCH = 64
#: tries of a change that lost a race with another gateway's change
CHANGE_TRIES = 4
#: bytes of knowledge-base blobs a gateway keeps decoded in memory
CACHE_BYTES = 256 << 20

Vectors = npt.NDArray[np.float32]
Embedder = Callable[[str, list[str]], Awaitable[Vectors]]


def describe(base: KnowledgeBase) -> apps_pb2.KnowledgeBase:
    """A knowledge base as the API shows it."""
    counts = base.index.documents()
    answer = apps_pb2.KnowledgeBase(
        name=base.name,
        description=base.description,
        embedding_model=base.embedding_model,
        version=base.version,
        chunks=len(base.index),
    )
    answer.updated_at.FromNanoseconds(int(base.updated_at * 1e9))
    for name, facts in sorted(base.documents.items()):
        document = answer.documents.add(
            name=name, sha256=facts.sha256, chunks=counts.get(name, 0), characters=facts.characters
        )
        document.added_at.FromNanoseconds(int(facts.added_at * 1e9))
    return answer


def dataset_name(name: str, version: int) -> str:
    return f"{DATASET_PREFIX}{name}.v{version}"


class KnowledgeBases:
    """Create, read, change and delete a tenant's knowledge bases."""

    def __init__(self, links: Links, embed: Embedder) -> None:
        self._storage = links.to("storage", storage_pb2_grpc.StorageStub)
        self._embed = embed
        #: decoded versions by tenant and blob digest (a version never changes), and
        #: their blob sizes: at most CACHE_BYTES of blobs are kept decoded
        self._cache: OrderedDict[str, tuple[KnowledgeBase, int]] = OrderedDict()

    async def _ask(self, method: str, request: Any) -> Any:
        return await self._storage.ask(method, request, NoDeadline())

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
        key = f"{tenant}/{dataset.sha256}"
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key][0]
        data = bytearray()
        request = storage_pb2.DownloadBlobRequest(tenant=tenant, sha256=dataset.sha256)
        async for chunk in self._storage.stream("DownloadBlob", request, NoDeadline()):
            data.extend(chunk.data)
        if hashlib.sha256(data).hexdigest() != dataset.sha256:
            raise FailedPrecondition(f"knowledge base {dataset.name!r} did not match its digest")
        try:
            base = await asyncio.to_thread(KnowledgeBase.from_bytes, bytes(data))
        except ValueError as exc:
            log.error("unreadable knowledge base", extra={"dataset": dataset.name, "why": str(exc)})
            raise FailedPrecondition(
                f"knowledge base {dataset.name!r} cannot be read; restore it from a backup"
            ) from None
        self._cache[key] = (base, len(data))
        while sum(size for _, size in self._cache.values()) > CACHE_BYTES and len(self._cache) > 1:
            self._cache.popitem(last=False)
        return base

    async def get(self, tenant: str, name: str, field_name: str = "name") -> KnowledgeBase:
        """The newest version of the tenant's knowledge base `name`. A version can be
        deleted between listing and reading it (a change just wrote the next): the newer
        one is read then."""
        check_knowledge_base(name, field_name)
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
        """The tenant's knowledge bases (one deleted while listing is left out)."""
        bases = []
        for name, versions in sorted((await self._versions(tenant)).items()):
            with contextlib.suppress(NotFound):  # replaced meanwhile: `get` finds the newer
                try:
                    bases.append(await self._read(tenant, versions[0]))
                except NotFound:
                    bases.append(await self.get(tenant, name))
        return bases

    async def create(
        self, tenant: str, name: str, description: str, embedding_model: str
    ) -> KnowledgeBase:
        """An empty knowledge base; its vectors' size is the embedding model's (a name the
        caller resolved: the vectors of one index must all come from one model)."""
        check_knowledge_base(name)
        check_description(description)
        if name in await self._versions(tenant):
            raise AlreadyExists(f"knowledge base {name!r} already exists")
        probe = await self._embed(embedding_model, ["knowledge base"])
        base = KnowledgeBase(
            name, description, embedding_model, 1, KnowledgeIndex(int(probe.shape[1])), {},
            time.time(),
        )  # fmt: skip
        try:
            await self._write(tenant, base)
        except FailedPrecondition:  # created meanwhile by another call
            raise AlreadyExists(f"knowledge base {name!r} already exists") from None
        return base

    async def delete(self, tenant: str, name: str) -> KnowledgeBase:
        """Delete every version. An AddDocuments racing with it may write one more version
        after the delete: the knowledge base then comes back holding that change."""
        base = await self.get(tenant, name)
        for dataset in (await self._versions(tenant)).get(name, []):
            await self._forget(tenant, dataset.name)
        return base

    async def add(
        self, tenant: str, name: str, documents: Sequence[apps_pb2.Document]
    ) -> KnowledgeBase:
        """Add (or replace) documents: extracted and chunked first (bad input is refused
        before any work), embedded once, then written as the next version — again on
        the newer version if another change wrote this one first."""
        check_knowledge_base(name, "knowledge_base")
        prepared = await asyncio.to_thread(_prepare, documents)
        base = await self.get(tenant, name, "knowledge_base")
        added = [
            (document.name, document.chunks, await self._vectors(base, document), document.facts)
            for document in prepared
        ]
        for _ in range(CHANGE_TRIES):
            changed = await asyncio.to_thread(base.changed, added, time.time())
            try:
                await self._write(tenant, changed)
            except FailedPrecondition:  # another change wrote this version first
                base = await self.get(tenant, name, "knowledge_base")
                continue
            for older in (await self._versions(tenant)).get(name, [])[1:]:
                await self._forget(tenant, older.name)
            return changed
        raise FailedPrecondition(
            f"knowledge base {name!r} changed {CHANGE_TRIES} times while adding; try again"
        )

    async def _vectors(self, base: KnowledgeBase, document: _Prepared) -> Vectors:
        """The passages' vectors by the knowledge base's own embedding model (it never
        changes, so vectors made for one version fit the next)."""
        texts = [chunk.text for chunk in document.chunks]
        parts = [
            await self._embed(base.embedding_model, texts[start : start + EMBED_BATCH])
            for start in range(0, len(texts), EMBED_BATCH)
        ]
        return np.concatenate(parts)

    async def _write(self, tenant: str, base: KnowledgeBase) -> None:
        data = await asyncio.to_thread(base.to_bytes)
        pieces = (data[at : at + UPLOAD_PIECE] for at in range(0, len(data), UPLOAD_PIECE))
        blob = await self._ask("UploadBlob", upload_requests(tenant, len(data), pieces))
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
    chunks: list[Chunk]
    facts: DocumentFacts


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
        facts = DocumentFacts(hashlib.sha256(document.content).hexdigest(), len(text), time.time())
        prepared.append(_Prepared(document.name, chunk_text(text), facts))
    return prepared
