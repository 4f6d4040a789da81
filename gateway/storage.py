"""The storage API on the gateway: the internal `llmos.v1.Storage` service, relayed with
every request's tenant replaced by the caller's (a tenant can name no other tenant's
objects), and the store-wide operations kept to the system tenant's admins.

Scopes (`gateway.auth.scopes`): blobs and datasets need `datasets`, reading the registry
`models:read`, changing it `models:write`, quotas, key rotation, backups and stats `admin`.

The bulk of a transfer is relayed as it arrived (`add_to_server`): of an UploadBlob
stream the gateway parses only the first message (the start, which gets the caller's
tenant) and passes the data messages on as bytes; of DownloadBlob it parses the request
(tenant, audit resource) and passes the blob's chunks on as bytes. Parsing and
re-serialising every MiB would cost the gateway as much CPU as the rest of its work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from gateway.auth.principal import call_record, caller
from gateway.auth.scopes import SYSTEM_TENANT
from gateway.relay import Route, RoutedRelay, admit, callers_tenant, named_tenant, no_tenant
from llmos.errors import InvalidArgument
from llmos.knowledge.base import DATASET_PREFIX as KNOWLEDGE_BASE_PREFIX
from llmos.links import Links
from llmos.protocheck import invalid_utf8_field
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
        super().__init__(links.to("storage", _StorageStub))

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

    async def UploadBlobBytes(
        self, requests: AsyncIterator[bytes], context: Any
    ) -> storage_pb2.Blob:
        """UploadBlob for gRPC callers, the messages relayed as bytes: the first one is
        parsed, stamped with the caller's tenant like `UploadBlob`'s, and serialised
        again; the data messages after it pass through unread (storage parses them)."""
        tenant = caller().tenant
        first = await anext(aiter(requests), None)
        if first is not None:
            request = _parsed(storage_pb2.UploadBlobRequest, first)
            if request.WhichOneof("part") == "start":
                request.start.tenant = tenant
                first = request.SerializeToString()

        async def stamped() -> AsyncIterator[bytes]:
            if first is not None:
                yield first
            async for raw in requests:
                yield raw

        blob: storage_pb2.Blob = await self.link.ask("UploadBlobBytes", stamped(), context)
        call_record().resource = f"blob/{blob.sha256}"
        return blob

    async def DownloadBlobBytes(
        self, request: storage_pb2.DownloadBlobRequest, context: Any
    ) -> AsyncIterator[bytes]:
        """DownloadBlob for gRPC callers: the request admitted by its route, the chunks
        relayed as the bytes storage sent."""
        admit(ROUTES["DownloadBlob"], request)
        async for raw in self.link.stream("DownloadBlobBytes", request, context):
            yield raw


_METHOD = "/llmos.v1.Storage/"


class _StorageStub(storage_pb2_grpc.StorageStub):  # type: ignore[misc]
    """The storage stub, plus UploadBlob and DownloadBlob carrying serialised messages
    (bytes) where the relay passes them through."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        self.UploadBlobBytes = channel.stream_unary(
            _METHOD + "UploadBlob", response_deserializer=storage_pb2.Blob.FromString
        )
        self.DownloadBlobBytes = channel.unary_stream(
            _METHOD + "DownloadBlob",
            request_serializer=storage_pb2.DownloadBlobRequest.SerializeToString,
        )


def _parsed(message_class: Any, raw: bytes) -> Any:
    """`raw` parsed; a message that does not parse is INVALID_ARGUMENT naming the field."""
    try:
        return message_class.FromString(raw)
    except DecodeError:
        field = invalid_utf8_field(message_class.DESCRIPTOR, raw)
        if field:
            raise InvalidArgument(field, "is not valid UTF-8") from None
        raise InvalidArgument("request", "is not a valid protobuf message") from None


class _Handlers:
    """Collects the method handlers the generated code registers (see add_to_server)."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = dict(handlers)


def add_to_server(relay: StorageRelay, server: grpc.aio.Server) -> None:
    """Register `relay` as `llmos.v1.Storage` on `server`, as the generated
    `add_StorageServicer_to_server` does, but with UploadBlob and DownloadBlob relaying
    the transfer's messages as bytes (`UploadBlobBytes`, `DownloadBlobBytes`)."""
    collected = _Handlers()
    storage_pb2_grpc.add_StorageServicer_to_server(relay, collected)
    handlers = collected.handlers
    handlers["UploadBlob"] = grpc.stream_unary_rpc_method_handler(
        relay.UploadBlobBytes, response_serializer=storage_pb2.Blob.SerializeToString
    )
    handlers["DownloadBlob"] = grpc.unary_stream_rpc_method_handler(
        relay.DownloadBlobBytes, request_deserializer=storage_pb2.DownloadBlobRequest.FromString
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("llmos.v1.Storage", handlers),)
    )
    server.add_registered_method_handlers("llmos.v1.Storage", handlers)
