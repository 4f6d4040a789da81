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
from gateway.relay import Route, RoutedRelay, callers_tenant, named_tenant, no_tenant
from llmos.errors import InvalidArgument
from llmos.knowledge.base import DATASET_PREFIX as KNOWLEDGE_BASE_PREFIX
from llmos.links import Links
from llmos.v1 import storage_pb2, storage_pb2_grpc


def _admins(action: str) -> str:
    """The refusal of a store-wide operation to a caller outside the system tenant."""
    return f"only admins of the {SYSTEM_TENANT!r} tenant may {action}"


def _not_reserved(request: Any) -> None:
    """Datasets named `kb.*` are knowledge bases, written only by the gateway itself (it
    parses them): no caller may create or delete one through the storage API."""
    if request.name.startswith(KNOWLEDGE_BASE_PREFIX):
        raise InvalidArgument(
            "name",
            f"names starting with {KNOWLEDGE_BASE_PREFIX!r} hold knowledge bases; manage "
            "those with the Applications API (`llmos kb`)",
        )


#: Every storage RPC but UploadBlob (a client stream): how the gateway relays it.
ROUTES: dict[str, Route] = {
    "GetUpload": Route(callers_tenant),
    "DownloadBlob": Route(callers_tenant, lambda r: f"blob/{r.sha256}", streams=True),
    "DeleteBlob": Route(callers_tenant, lambda r: f"blob/{r.sha256}"),
    "CreateDataset": Route(callers_tenant, lambda r: f"dataset/{r.name}", check=_not_reserved),
    "GetDataset": Route(callers_tenant, lambda r: f"dataset/{r.name}"),
    "ListDatasets": Route(callers_tenant, lambda r: "datasets"),
    "DeleteDataset": Route(callers_tenant, lambda r: f"dataset/{r.name}", check=_not_reserved),
    "CreateModelVersion": Route(callers_tenant, lambda r: f"model/{r.model}"),
    "GetModelVersion": Route(callers_tenant, lambda r: f"model/{r.model}"),
    "ListModelVersions": Route(callers_tenant, lambda r: f"model/{r.model or '*'}"),
    "SetAlias": Route(callers_tenant, lambda r: f"model/{r.model}@{r.alias}"),
    "DeleteModelVersion": Route(callers_tenant, lambda r: f"model/{r.model}/{r.version}"),
    "SetStorageQuota": Route(
        named_tenant, lambda r: f"tenant/{r.tenant}", system_only=_admins("set storage quotas")
    ),
    "RotateStorageKey": Route(no_tenant, system_only=_admins("rotate the storage key")),
    "BackupStorage": Route(no_tenant, system_only=_admins("back up storage")),
    "RestoreStorage": Route(no_tenant, system_only=_admins("restore storage")),
    "GetStorageStats": Route(no_tenant, system_only=_admins("see store-wide statistics")),
}


class StorageRelay(RoutedRelay, storage_pb2_grpc.StorageServicer, routes=ROUTES):  # type: ignore[misc]
    """`llmos.v1.Storage` for outside callers, relayed to the internal service."""

    def __init__(self, links: Links) -> None:
        super().__init__(links.to("storage", storage_pb2_grpc.StorageStub))

    async def UploadBlob(
        self, requests: AsyncIterator[storage_pb2.UploadBlobRequest], context: Any
    ) -> storage_pb2.Blob:
        """The caller's tenant goes on the stream's first message (the start); the blob's
        digest, known only at the end, names the resource."""
        tenant = caller().tenant

        async def stamped() -> AsyncIterator[storage_pb2.UploadBlobRequest]:
            first = True
            async for request in requests:
                if first and request.WhichOneof("part") == "start":
                    request.start.tenant = tenant
                first = False
                yield request

        blob: storage_pb2.Blob = await self.link.ask("UploadBlob", stamped(), context)
        call_record().resource = f"blob/{blob.sha256}"
        return blob
