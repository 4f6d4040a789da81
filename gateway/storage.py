"""The storage API on the gateway: the internal `llmos.v1.Storage` service, relayed with
every request's tenant replaced by the caller's (a tenant can name no other tenant's
objects), and the store-wide operations kept to the system tenant's admins.

Scopes (`gateway.auth.scopes`): blobs and datasets need `datasets`, reading the registry
`models:read`, changing it `models:write`, quotas, key rotation, backups and stats `admin`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.auth.principal import call_record, caller
from gateway.auth.scopes import SYSTEM_TENANT
from llmos.errors import InvalidArgument, PermissionDenied
from llmos.links import ServiceLink
from llmos.registry import ServiceRegistry
from llmos.v1 import storage_pb2, storage_pb2_grpc


def _own(request: Any, resource: str = "") -> Any:
    """Stamp the caller's tenant on the request (and name the resource for the audit)."""
    request.tenant = caller().tenant
    if resource:
        call_record().resource = resource
    return request


def _system_admin(action: str) -> None:
    if caller().tenant != SYSTEM_TENANT:
        raise PermissionDenied(f"only admins of the {SYSTEM_TENANT!r} tenant may {action}")


class StorageRelay(storage_pb2_grpc.StorageServicer):  # type: ignore[misc]
    def __init__(self, registry: ServiceRegistry) -> None:
        self._storage = ServiceLink(registry, "storage", storage_pb2_grpc.StorageStub)

    async def UploadBlob(
        self, requests: AsyncIterator[storage_pb2.UploadBlobRequest], context: Any
    ) -> storage_pb2.Blob:
        tenant = caller().tenant

        async def stamped() -> AsyncIterator[storage_pb2.UploadBlobRequest]:
            first = True
            async for request in requests:
                if first and request.WhichOneof("part") == "start":
                    request.start.tenant = tenant
                first = False
                yield request

        blob: storage_pb2.Blob = await self._storage.ask("UploadBlob", stamped(), context)
        call_record().resource = f"blob/{blob.sha256}"
        return blob

    async def GetUpload(self, request: Any, context: Any) -> storage_pb2.UploadStatus:
        status: storage_pb2.UploadStatus = await self._storage.ask(
            "GetUpload", _own(request), context
        )
        return status

    async def DownloadBlob(
        self, request: storage_pb2.DownloadBlobRequest, context: Any
    ) -> AsyncIterator[storage_pb2.BlobChunk]:
        _own(request, f"blob/{request.sha256}")
        async for chunk in self._storage.stream("DownloadBlob", request, context):
            yield chunk

    async def DeleteBlob(self, request: Any, context: Any) -> storage_pb2.Blob:
        result: storage_pb2.Blob = await self._relay(
            "DeleteBlob", request, context, f"blob/{request.sha256}"
        )
        return result

    async def _relay(self, method: str, request: Any, context: Any, resource: str) -> Any:
        return await self._storage.ask(method, _own(request, resource), context)

    async def CreateDataset(self, request: Any, context: Any) -> storage_pb2.Dataset:
        result: storage_pb2.Dataset = await self._relay(
            "CreateDataset", request, context, f"dataset/{request.name}"
        )
        return result

    async def GetDataset(self, request: Any, context: Any) -> storage_pb2.Dataset:
        result: storage_pb2.Dataset = await self._relay(
            "GetDataset", request, context, f"dataset/{request.name}"
        )
        return result

    async def ListDatasets(self, request: Any, context: Any) -> storage_pb2.ListDatasetsResponse:
        result: storage_pb2.ListDatasetsResponse = await self._relay(
            "ListDatasets", request, context, "datasets"
        )
        return result

    async def DeleteDataset(self, request: Any, context: Any) -> storage_pb2.Dataset:
        result: storage_pb2.Dataset = await self._relay(
            "DeleteDataset", request, context, f"dataset/{request.name}"
        )
        return result

    async def CreateModelVersion(self, request: Any, context: Any) -> storage_pb2.ModelVersion:
        result: storage_pb2.ModelVersion = await self._relay(
            "CreateModelVersion", request, context, f"model/{request.model}"
        )
        return result

    async def GetModelVersion(self, request: Any, context: Any) -> storage_pb2.ModelVersion:
        result: storage_pb2.ModelVersion = await self._relay(
            "GetModelVersion", request, context, f"model/{request.model}"
        )
        return result

    async def ListModelVersions(
        self, request: Any, context: Any
    ) -> storage_pb2.ListModelVersionsResponse:
        result: storage_pb2.ListModelVersionsResponse = await self._relay(
            "ListModelVersions", request, context, f"model/{request.model or '*'}"
        )
        return result

    async def SetAlias(self, request: Any, context: Any) -> storage_pb2.ModelVersion:
        result: storage_pb2.ModelVersion = await self._relay(
            "SetAlias", request, context, f"model/{request.model}@{request.alias}"
        )
        return result

    async def DeleteModelVersion(self, request: Any, context: Any) -> storage_pb2.ModelVersion:
        result: storage_pb2.ModelVersion = await self._relay(
            "DeleteModelVersion", request, context, f"model/{request.model}/{request.version}"
        )
        return result

    async def SetStorageQuota(
        self, request: storage_pb2.SetStorageQuotaRequest, context: Any
    ) -> storage_pb2.StorageQuota:
        _system_admin("set storage quotas")
        if not request.tenant:
            raise InvalidArgument("tenant", "is required")
        call_record().resource = f"tenant/{request.tenant}"
        quota: storage_pb2.StorageQuota = await self._storage.ask(
            "SetStorageQuota", request, context
        )
        return quota

    async def RotateStorageKey(
        self, request: Any, context: Any
    ) -> storage_pb2.RotateStorageKeyResponse:
        _system_admin("rotate the storage key")
        result: storage_pb2.RotateStorageKeyResponse = await self._storage.ask(
            "RotateStorageKey", request, context
        )
        return result

    async def BackupStorage(self, request: Any, context: Any) -> storage_pb2.BackupStorageResponse:
        _system_admin("back up storage")
        result: storage_pb2.BackupStorageResponse = await self._storage.ask(
            "BackupStorage", request, context
        )
        return result

    async def RestoreStorage(self, request: Any, context: Any) -> storage_pb2.BackupStorageResponse:
        _system_admin("restore storage")
        result: storage_pb2.BackupStorageResponse = await self._storage.ask(
            "RestoreStorage", request, context
        )
        return result

    async def GetStorageStats(self, request: Any, context: Any) -> storage_pb2.StorageStats:
        _system_admin("see store-wide statistics")
        result: storage_pb2.StorageStats = await self._storage.ask(
            "GetStorageStats", request, context
        )
        return result
