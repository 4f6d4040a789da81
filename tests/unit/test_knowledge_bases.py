"""Knowledge bases' versioning through storage, against an in-memory storage that can
play a second gateway: what two concurrent changes, a create race and a version deleted
under a reader end in."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from gateway.apps.knowledge import KnowledgeBases, dataset_name
from llmos.errors import AlreadyExists, FailedPrecondition, NotFound
from llmos.v1 import apps_pb2, storage_pb2

DIM = 8


class FakeStorage:
    """Blobs and datasets of one tenant as the storage service keeps them: a dataset
    name is never reused while it exists, and a blob a dataset names is not deleted."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.datasets: dict[str, str] = {}
        #: called before a CreateDataset takes effect (another gateway acting first)
        self.before_create: Callable[[str], None] = lambda name: None
        #: called before a DownloadBlob (a change deleting the version being read)
        self.before_download: Callable[[str], None] = lambda sha256: None

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    async def ask(self, method: str, request: Any, context: Any) -> Any:
        if method == "UploadBlob":
            data = b"".join([piece.data async for piece in request if piece.data])
            return storage_pb2.Blob(sha256=self.put(data), size=len(data))
        if method == "ListDatasets":
            return storage_pb2.ListDatasetsResponse(
                datasets=[storage_pb2.Dataset(name=n, sha256=s) for n, s in self.datasets.items()]
            )
        if method == "CreateDataset":
            self.before_create(request.name)
            if request.name in self.datasets:
                raise FailedPrecondition(f"dataset {request.name!r} already exists")
            self.datasets[request.name] = request.sha256
            return storage_pb2.Dataset(name=request.name, sha256=request.sha256)
        if method == "DeleteDataset":  # deleting a blob's last user deletes the blob
            sha256 = self.datasets.pop(request.name, None)
            if sha256 is None:
                raise NotFound(f"dataset {request.name!r} does not exist")
            if sha256 not in self.datasets.values():
                self.blobs.pop(sha256, None)
            return storage_pb2.Dataset(name=request.name)
        if method == "DeleteBlob":
            if request.sha256 not in self.datasets.values():
                self.blobs.pop(request.sha256, None)
            return storage_pb2.Blob(sha256=request.sha256)
        raise AssertionError(method)

    async def stream(self, method: str, request: Any, context: Any) -> AsyncIterator[Any]:
        assert method == "DownloadBlob"
        self.before_download(request.sha256)
        if request.sha256 not in self.blobs or request.sha256 not in self.datasets.values():
            raise NotFound(f"blob {request.sha256} does not exist")
        yield storage_pb2.BlobChunk(data=self.blobs[request.sha256])


class FakeLinks:
    def __init__(self, storage: FakeStorage) -> None:
        self.storage = storage

    def to(self, service: str, stub: Any) -> FakeStorage:
        return self.storage


class Embedder:
    """Vectors that depend on the text only; counts the texts it embedded."""

    def __init__(self) -> None:
        self.texts = 0

    async def __call__(self, model: str, texts: list[str]) -> Any:
        self.texts += len(texts)
        rows = [np.random.default_rng(len(t)).standard_normal(DIM) for t in texts]
        return np.array(rows, dtype=np.float32)


@pytest.fixture
def storage() -> FakeStorage:
    return FakeStorage()


@pytest.fixture
def embed() -> Embedder:
    return Embedder()


@pytest.fixture
def bases(storage: FakeStorage, embed: Embedder) -> KnowledgeBases:
    return KnowledgeBases(FakeLinks(storage), embed)  # type: ignore[arg-type]


def doc(name: str, text: str) -> apps_pb2.Document:
    return apps_pb2.Document(name=name, content=text.encode())


async def test_each_change_is_the_next_version_and_the_older_ones_go(
    bases: KnowledgeBases, storage: FakeStorage
) -> None:
    await bases.create("shop", "faq", "", "smollm2")
    await bases.add("shop", "faq", [doc("a.txt", "Returns within 30 days.")])
    changed = await bases.add("shop", "faq", [doc("b.txt", "Shipping takes 3 days.")])
    assert changed.version == 3
    assert set(storage.datasets) == {dataset_name("faq", 3)}
    assert set(changed.documents) == {"a.txt", "b.txt"}
    assert (await bases.get("shop", "faq")).version == 3


async def test_a_change_that_loses_a_race_is_applied_again_on_the_winners_version(
    bases: KnowledgeBases, storage: FakeStorage, embed: Embedder
) -> None:
    await bases.create("shop", "faq", "", "smollm2")
    first = await bases.get("shop", "faq")

    def another_gateway_first(name: str) -> None:
        """Another gateway writes version 2 first, with a document of its own."""
        if name == dataset_name("faq", 2) and name not in storage.datasets:
            rival = first.changed(
                [("rival.txt", _chunks("Rival text."), np.ones((1, DIM)), _facts())], 0.0
            )
            storage.datasets[name] = storage.put(rival.to_bytes())

    storage.before_create = another_gateway_first
    embedded_before = embed.texts
    changed = await bases.add("shop", "faq", [doc("mine.txt", "My text.")])
    assert changed.version == 3
    assert set(changed.documents) == {"rival.txt", "mine.txt"}  # nothing lost
    assert embed.texts - embedded_before == 1  # embedded once, not again per try
    # the blob of the version that lost is gone: nothing names it
    assert set(storage.blobs) == set(storage.datasets.values())


async def test_a_create_that_loses_a_race_is_already_exists_and_leaves_no_blob(
    bases: KnowledgeBases, storage: FakeStorage
) -> None:
    def created_meanwhile(name: str) -> None:
        storage.datasets.setdefault(name, storage.put(b"someone else's"))

    storage.before_create = created_meanwhile
    with pytest.raises(AlreadyExists):
        await bases.create("shop", "faq", "", "smollm2")
    assert set(storage.blobs) == set(storage.datasets.values())


async def test_a_reader_meeting_a_replaced_version_reads_the_newer_one(
    bases: KnowledgeBases, storage: FakeStorage
) -> None:
    await bases.create("shop", "faq", "", "smollm2")
    newer = await bases.add("shop", "faq", [doc("a.txt", "Returns within 30 days.")])
    fresh = KnowledgeBases(FakeLinks(storage), Embedder())  # type: ignore[arg-type]
    replaced = False

    def replace_once(sha256: str) -> None:
        nonlocal replaced
        if not replaced:  # a change writes version 3 and deletes 2 under the reader
            replaced = True
            third = newer.changed([], 0.0)
            storage.datasets[dataset_name("faq", 3)] = storage.put(third.to_bytes())
            del storage.datasets[dataset_name("faq", 2)]

    storage.before_download = replace_once
    assert (await fresh.get("shop", "faq")).version == 3


async def test_a_forged_or_damaged_blob_is_refused_not_parsed_halfway(
    bases: KnowledgeBases, storage: FakeStorage
) -> None:
    storage.datasets[dataset_name("faq", 1)] = storage.put(b"LLMOSKBS" + b"\x00" * 8 + b"junk")
    with pytest.raises(FailedPrecondition, match="cannot be read"):
        await bases.get("shop", "faq")


def _chunks(text: str) -> list[Any]:
    from llmos.knowledge.chunking import chunk_text

    return chunk_text(text)


def _facts() -> Any:
    from llmos.knowledge.base import DocumentFacts

    return DocumentFacts("0" * 64, 11, 0.0)
