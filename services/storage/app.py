"""The storage service's API: blobs, datasets, the model registry, keys and backups.

Every request names its tenant (asserted by the gateway) and every lookup is keyed by it,
so no call can see or use another tenant's objects — except the models of the `system`
tenant, which every tenant may read (the shipped default model lives there). Writes,
deletes and alias moves are audited (`llmos.audit.storage`).

This module is the transport only: it turns requests into calls of the plain logic
(`transfers`, `datasets`, `registry`, `quotas`, `operations`) and rows into messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import grpc
from google.protobuf.json_format import MessageToDict
from prometheus_client import REGISTRY

from llmos.auditing import AuditPublisher, new_record
from llmos.runner import ServiceContext
from llmos.timestamps import timestamp
from llmos.v1 import storage_pb2, storage_pb2_grpc
from services.storage.backends import blob_place, metadata_database
from services.storage.blobs import BlobFiles
from services.storage.crypto import KeyEncryptionKeys
from services.storage.datasets import Datasets
from services.storage.metadata import DatasetRow, Metadata, VersionRow
from services.storage.metrics import StorageCollector
from services.storage.operations import StoreOperations
from services.storage.options import StorageOptions
from services.storage.quotas import Quotas
from services.storage.registry import Registry
from services.storage.store import AuditTrail, Store
from services.storage.transfers import Transfers, UploadChunk, UploadPart, UploadStart

log = logging.getLogger("llmos.storage")


class StorageServicer(storage_pb2_grpc.StorageServicer):  # type: ignore[misc]
    """`llmos.v1.Storage` over one open store."""

    def __init__(self, store: Store, options: StorageOptions) -> None:
        self._store = store
        self._quotas = Quotas(store, options.tenant_quota_bytes)
        #: public: the service's upload expiry sweeps the same uploads
        self.transfers = self._transfers = Transfers(store, self._quotas)
        self._datasets = Datasets(store)
        self._registry = Registry(store)
        self._operations = StoreOperations(store, options.kek_file)

    # -- blobs ---------------------------------------------------------------------------

    async def GetStorageStats(
        self, request: storage_pb2.GetStorageStatsRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.StorageStats:
        blobs, stored, models = self._store.meta.stats()
        return storage_pb2.StorageStats(blob_count=blobs, stored_bytes=stored, model_count=models)

    async def UploadBlob(
        self,
        requests: AsyncIterator[storage_pb2.UploadBlobRequest],
        context: grpc.aio.ServicerContext,
    ) -> storage_pb2.Blob:
        blob = await self._transfers.upload(_upload_parts(requests))
        return storage_pb2.Blob(
            tenant=blob.tenant, sha256=blob.sha256, size=blob.size, deduplicated=blob.deduplicated
        )

    async def GetUpload(
        self, request: storage_pb2.GetUploadRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.UploadStatus:
        received, size = await self._transfers.progress(request.tenant, request.upload_id)
        return storage_pb2.UploadStatus(upload_id=request.upload_id, received=received, size=size)

    async def DownloadBlob(
        self, request: storage_pb2.DownloadBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[storage_pb2.BlobChunk]:
        pieces = self._transfers.download(
            request.tenant, request.sha256, request.offset, request.length
        )
        async for piece in pieces:
            yield storage_pb2.BlobChunk(offset=piece.offset, data=piece.data, size=piece.size)

    async def DeleteBlob(
        self, request: storage_pb2.DownloadBlobRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Blob:
        row = await self._transfers.delete(request.tenant, request.sha256)
        return storage_pb2.Blob(tenant=row.tenant, sha256=row.sha256, size=row.size)

    # -- datasets ------------------------------------------------------------------------

    async def CreateDataset(
        self, request: storage_pb2.CreateDatasetRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Dataset:
        row = await self._datasets.create(
            request.tenant, request.name, request.sha256, request.description
        )
        return _dataset(row)

    async def GetDataset(
        self, request: storage_pb2.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Dataset:
        return _dataset(self._datasets.get(request.tenant, request.name))

    async def ListDatasets(
        self, request: storage_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ListDatasetsResponse:
        rows = self._datasets.list(request.tenant)
        return storage_pb2.ListDatasetsResponse(datasets=[_dataset(r) for r in rows])

    async def DeleteDataset(
        self, request: storage_pb2.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Dataset:
        return _dataset(await self._datasets.delete(request.tenant, request.name))

    # -- model registry ------------------------------------------------------------------

    async def CreateModelVersion(
        self, request: storage_pb2.CreateModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ModelVersion:
        row = await self._registry.create(
            request.tenant,
            request.model,
            dict(request.files),
            MessageToDict(request.metadata),
            MessageToDict(request.lineage),
        )
        return _model_version(row)

    async def GetModelVersion(
        self, request: storage_pb2.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ModelVersion:
        row = self._registry.find(request.tenant, request.model, request.version, request.alias)
        return _model_version(row)

    async def ListModelVersions(
        self, request: storage_pb2.ListModelVersionsRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ListModelVersionsResponse:
        rows = self._registry.list(request.tenant, request.model)
        return storage_pb2.ListModelVersionsResponse(versions=[_model_version(r) for r in rows])

    async def SetAlias(
        self, request: storage_pb2.SetAliasRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ModelVersion:
        row = await self._registry.set_alias(
            request.tenant, request.model, request.alias, request.version
        )
        return _model_version(row)

    async def DeleteModelVersion(
        self, request: storage_pb2.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ModelVersion:
        row = await self._registry.delete(
            request.tenant, request.model, request.version, request.alias
        )
        return _model_version(row)

    # -- operations ----------------------------------------------------------------------

    async def SetStorageQuota(
        self, request: storage_pb2.SetStorageQuotaRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.StorageQuota:
        used = self._quotas.set(request.tenant, request.bytes)
        return storage_pb2.StorageQuota(tenant=request.tenant, bytes=request.bytes, used_bytes=used)

    async def RotateStorageKey(
        self, request: storage_pb2.RotateStorageKeyRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.RotateStorageKeyResponse:
        key_id, count = await self._operations.rotate_key()
        return storage_pb2.RotateStorageKeyResponse(key_id=key_id, rewrapped=count)

    async def BackupStorage(
        self, request: storage_pb2.BackupStorageRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.BackupStorageResponse:
        target, blobs, size = await self._operations.backup(request.path)
        return storage_pb2.BackupStorageResponse(path=str(target), blobs=blobs, bytes=size)

    async def RestoreStorage(
        self, request: storage_pb2.RestoreStorageRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.BackupStorageResponse:
        source, blobs, size = await self._operations.restore(request.path)
        return storage_pb2.BackupStorageResponse(path=str(source), blobs=blobs, bytes=size)


async def _upload_parts(
    requests: AsyncIterator[storage_pb2.UploadBlobRequest],
) -> AsyncIterator[UploadPart]:
    """An upload stream's messages as the transfer logic reads them."""
    async for request in requests:
        part = request.WhichOneof("part")
        if part == "start":
            start = request.start
            yield UploadStart(start.tenant, start.upload_id, start.size, start.sha256)
        elif part == "data":
            yield UploadChunk(request.offset, request.data)
        else:
            yield None


def _dataset(row: DatasetRow) -> storage_pb2.Dataset:
    return storage_pb2.Dataset(
        tenant=row.tenant, name=row.name, sha256=row.sha256, size=row.size,
        records=row.records, description=row.description, created_at=timestamp(row.created),
    )  # fmt: skip


def _model_version(row: VersionRow) -> storage_pb2.ModelVersion:
    message = storage_pb2.ModelVersion(
        tenant=row.tenant, model=row.model, version=row.version, files=row.files,
        aliases=list(row.aliases), created_at=timestamp(row.created),
    )  # fmt: skip
    message.metadata.update(row.metadata)
    message.lineage.update(row.lineage)
    return message


async def _expire_uploads(transfers: Transfers, idle_s: float) -> None:
    """Release abandoned uploads (quota reservation and file) now and then: often enough
    that one is gone soon after it has been idle `idle_s`, at most every minute."""
    while True:
        await asyncio.sleep(min(idle_s / 4, 60.0))
        try:
            expired = await transfers.expire_idle(idle_s)
        except Exception:  # a failed sweep is retried at the next one
            log.exception("expiring idle uploads failed")
            continue
        if expired:
            log.info("idle uploads expired", extra={"count": len(expired)})


def audit_trail(audit: AuditPublisher) -> AuditTrail:
    """The store's changes as `storage` audit records on `audit`."""

    def record(tenant: str, action: str, resource: str, detail: str) -> None:
        entry = new_record("storage", action)
        entry.tenant = tenant
        entry.resource = resource
        entry.outcome = "OK"
        entry.detail = detail
        audit.record(entry)

    return record


async def attach(ctx: ServiceContext, server: grpc.aio.Server, stack: AsyncExitStack) -> list[str]:
    """Open the store (sweeping what a crash left) and serve the API."""
    options: StorageOptions = ctx.options
    settings = ctx.settings
    root = options.root(settings.data_dir)
    database = await asyncio.to_thread(
        metadata_database, options, root, settings.secrets_dir, settings.connect_timeout_s
    )
    metadata = Metadata(database)
    place = await asyncio.to_thread(blob_place, options, root, settings.secrets_dir)
    keys = KeyEncryptionKeys(root / "keys", options.kek_file)
    files = BlobFiles(place, metadata, keys)
    await asyncio.to_thread(files.sweep)
    log.info("storage opened", extra={"metadata": database.where, "blobs": place.where})
    audit = ctx.audit
    store = Store(files, audit_trail(audit))
    stack.callback(store.close)
    collector = StorageCollector(
        metadata_database(options, root, settings.secrets_dir, settings.connect_timeout_s)
    )
    stack.callback(collector.close)
    REGISTRY.register(collector)
    stack.callback(REGISTRY.unregister, collector)  # before its connection closes
    servicer = StorageServicer(store, options)
    expiry = asyncio.create_task(
        _expire_uploads(servicer.transfers, options.upload_idle_s), name="upload-expiry"
    )

    async def stop_expiry() -> None:
        expiry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expiry

    stack.push_async_callback(stop_expiry)
    storage_pb2_grpc.add_StorageServicer_to_server(servicer, server)
    return [storage_pb2.DESCRIPTOR.services_by_name["Storage"].full_name]
