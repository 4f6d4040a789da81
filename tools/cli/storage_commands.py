"""`llmos datasets ...`, `llmos models register|versions|alias|export` and the storage
admin commands: the storage API through the gateway.

Files are streamed in 1 MiB pieces (never read whole), with a progress line on stderr;
a broken upload is resumed from what the server stored (same upload id), up to 3 times.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from llmos.v1 import gateway_pb2, storage_pb2, storage_pb2_grpc

PIECE = 1 << 20
RESUMES = 3
EXIT_OK = 0


def file_digest(path: Path) -> str:
    """sha256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while piece := file.read(PIECE):
            digest.update(piece)
    return digest.hexdigest()


def upload_file(
    stub: storage_pb2_grpc.StorageStub, path: Path, timeout: float, quiet: bool = False
) -> storage_pb2.Blob:
    """Upload `path` (checked against its digest), resuming after a broken stream."""
    size = path.stat().st_size
    start = storage_pb2.UploadStart(upload_id=uuid.uuid4().hex, size=size, sha256=file_digest(path))

    def messages(offset: int) -> Iterator[storage_pb2.UploadBlobRequest]:
        yield storage_pb2.UploadBlobRequest(start=start)
        with path.open("rb") as file:
            file.seek(offset)
            while piece := file.read(PIECE):
                yield storage_pb2.UploadBlobRequest(data=piece, offset=offset)
                offset += len(piece)
                if not quiet:
                    print(f"\r{path.name}: {offset * 100 // max(size, 1)}% of {size} bytes",
                          end="", file=sys.stderr, flush=True)  # fmt: skip

    offset = 0
    for attempt in range(RESUMES + 1):
        try:
            blob: storage_pb2.Blob = stub.UploadBlob(messages(offset), timeout=timeout)
            if not quiet:
                print(file=sys.stderr)
            return blob
        except grpc.RpcError as exc:
            retriable = exc.code() in (
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )  # fmt: skip
            if not retriable or attempt == RESUMES:
                raise
            status = stub.GetUpload(storage_pb2.GetUploadRequest(upload_id=start.upload_id))
            offset = status.received
    raise AssertionError("unreachable")


def _print(message: Message) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True))


def cmd_datasets(args: argparse.Namespace) -> int:
    stub, t = args.storage(args), args.timeout
    action = args.datasets_command
    if action == "upload":
        blob = upload_file(stub, Path(args.file), t, args.quiet)
        request = storage_pb2.CreateDatasetRequest(
            name=args.name, sha256=blob.sha256, description=args.description
        )
        _print(stub.CreateDataset(request, timeout=t))
    elif action == "list":
        for dataset in stub.ListDatasets(storage_pb2.ListDatasetsRequest(), timeout=t).datasets:
            print(f"{dataset.name}\t{dataset.size} bytes\t{dataset.records} records\t"
                  f"{dataset.sha256}")  # fmt: skip
    elif action == "describe":
        _print(stub.GetDataset(storage_pb2.GetDatasetRequest(name=args.name), timeout=t))
    else:
        _print(stub.DeleteDataset(storage_pb2.GetDatasetRequest(name=args.name), timeout=t))
    return EXIT_OK


def _version_request(ref: str) -> storage_pb2.GetModelVersionRequest:
    """NAME, NAME@VERSION or NAME:ALIAS."""
    if "@" in ref:
        name, _, version = ref.partition("@")
        return storage_pb2.GetModelVersionRequest(model=name, version=int(version))
    name, _, alias = ref.partition(":")
    return storage_pb2.GetModelVersionRequest(model=name, alias=alias)


def cmd_models_registry(args: argparse.Namespace) -> int:
    stub, t = args.storage(args), args.timeout
    action = args.models_command
    if action == "register":
        folder = Path(args.folder)
        files = {
            str(path.relative_to(folder)): upload_file(stub, path, t, args.quiet).sha256
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }
        request = storage_pb2.CreateModelVersionRequest(model=args.name, files=files)
        if args.parent:
            request.lineage.update({"parent": args.parent})
        _print(stub.CreateModelVersion(request, timeout=t))
    elif action == "versions":
        listed = stub.ListModelVersions(
            storage_pb2.ListModelVersionsRequest(model=args.name or ""), timeout=t
        )
        for version in listed.versions:
            aliases = ",".join(version.aliases)
            print(f"{version.model}@{version.version}\t{aliases}\t"
                  f"{json_format.MessageToDict(version.metadata)}")  # fmt: skip
    elif action == "alias":
        request_alias = storage_pb2.SetAliasRequest(
            model=args.name, alias=args.alias, version=args.version
        )
        _print(stub.SetAlias(request_alias, timeout=t))
    elif action == "deploy":
        deployment = args.gateway_stub(args).DeployModel(
            gateway_pb2.DeployModelRequest(model=args.name, version=args.version),
            timeout=max(t, 600),
        )
        print(f"{deployment.model}@{deployment.version} is served as {deployment.served_as}")
    else:  # export
        version = stub.GetModelVersion(_version_request(args.ref), timeout=t)
        target = Path(args.folder)
        for relative, sha256 in sorted(version.files.items()):
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as file:
                wanted = storage_pb2.DownloadBlobRequest(sha256=sha256)
                for chunk in stub.DownloadBlob(wanted, timeout=t):
                    file.write(chunk.data)
        print(f"{version.model}@{version.version} -> {target}")
    return EXIT_OK


def cmd_storage_admin(args: argparse.Namespace) -> int:
    stub, t = args.storage(args), args.timeout
    action = args.admin_action
    reply: Message
    if action == "backup":
        reply = stub.BackupStorage(storage_pb2.BackupStorageRequest(path=args.path), timeout=t)
    elif action == "restore":
        reply = stub.RestoreStorage(storage_pb2.RestoreStorageRequest(path=args.path), timeout=t)
    elif action in ("rotate-storage-key", "rotate-key"):  # rotate-key storage
        reply = stub.RotateStorageKey(storage_pb2.RotateStorageKeyRequest(), timeout=t)
    else:  # storage-quota
        request = storage_pb2.SetStorageQuotaRequest(tenant=args.tenant, bytes=args.bytes)
        reply = stub.SetStorageQuota(request, timeout=t)
    _print(reply)
    return EXIT_OK


def add_commands(
    commands: Any, models: Any, admin: Callable[[str, str], argparse.ArgumentParser]
) -> None:
    """Wire the commands into the `llmos` parser."""
    datasets = commands.add_parser("datasets", help="upload, list, describe, delete datasets")
    actions = datasets.add_subparsers(dest="datasets_command", required=True)
    upload = actions.add_parser("upload", help="upload a file as a dataset (resumable)")
    upload.add_argument("file")
    upload.add_argument("name")
    upload.add_argument("--description", default="")
    upload.add_argument("--quiet", action="store_true", help="no progress line")
    actions.add_parser("list", help="the tenant's datasets")
    actions.add_parser("describe", help="size, records, digest").add_argument("name")
    actions.add_parser("delete", help="delete a dataset (and its data)").add_argument("name")
    datasets.set_defaults(run=cmd_datasets)

    register = models.add_parser("register", help="a Hugging Face folder as a new version")
    register.add_argument("folder")
    register.add_argument("name")
    register.add_argument("--parent", help="lineage: the model version it derives from")
    register.add_argument("--quiet", action="store_true", help="no progress lines")
    register.set_defaults(run=cmd_models_registry)
    versions = models.add_parser("versions", help="registered versions (of one model)")
    versions.add_argument("name", nargs="?")
    versions.set_defaults(run=cmd_models_registry)
    alias = models.add_parser("alias", help="point an alias at a version (atomic)")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version", type=int)
    alias.set_defaults(run=cmd_models_registry)
    deploy = models.add_parser(
        "deploy", help="serve a version: it becomes production, a worker loads it, no restart"
    )
    deploy.add_argument("name")
    deploy.add_argument("version", type=int)
    deploy.set_defaults(run=cmd_models_registry)
    export = models.add_parser("export", help="write a version's files to a folder")
    export.add_argument("ref", help="NAME, NAME@VERSION or NAME:ALIAS")
    export.add_argument("folder")
    export.set_defaults(run=cmd_models_registry)

    backup = admin("backup", "consistent online snapshot of storage into PATH (on its host)")
    backup.add_argument("path")
    restore = admin("restore", "bring a fresh storage service back to the backup at PATH")
    restore.add_argument("path")
    rotate = admin("rotate-storage-key", "same as: rotate-key storage")
    quota = admin("storage-quota", "bytes a tenant may store")
    quota.add_argument("tenant")
    quota.add_argument("bytes", type=int)
    for parser in (backup, restore, rotate, quota):
        parser.set_defaults(run=cmd_storage_admin)
