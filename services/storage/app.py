"""The storage service's API: blobs, datasets, the model registry, keys and backups.

Every request names its tenant (asserted by the gateway) and every lookup is keyed by it,
so no call can see or use another tenant's objects — except the models of the `system`
tenant, which every tenant may read (the shipped default model lives there). Writes,
deletes and alias moves are audited (`llmos.audit.storage`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from llmos.auditing import AuditPublisher, new_record
from llmos.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from llmos.runner import ServiceContext
from llmos.training import parameter_count
from llmos.v1 import storage_pb2, storage_pb2_grpc
from services.storage.blobs import BlobFiles, DigestMismatch, Upload
from services.storage.crypto import Corrupt, KeyEncryptionKeys
from services.storage.metadata import DatasetRow, Metadata, VersionRow
from services.storage.options import StorageOptions

SYSTEM_TENANT = "system"
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
FILE_PATH = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
MAX_BLOB = 1 << 40
MAX_STRUCT_BYTES = 64 << 10
DOWNLOAD_GROUP = 3  # 1 MiB chunks per streamed message: under the default 4 MiB limit


def check_name(value: str, field: str) -> str:
    if not NAME.match(value) or ".." in value:
        raise InvalidArgument(
            field,
            f"{value!r} is not a name (1-128 of a-z 0-9 . _ -, starting with a letter or digit)",
        )
    return value


def check_tenant(tenant: str) -> str:
    if not tenant:
        raise InvalidArgument("tenant", "is required")
    return tenant


def check_sha256(value: str, field: str = "sha256") -> str:
    if not SHA256.match(value):
        raise InvalidArgument(field, "must be 64 lowercase hexadecimal characters")
    return value


def check_struct(value: Struct, field: str) -> dict[str, Any]:
    data = MessageToDict(value)
    if len(json.dumps(data)) > MAX_STRUCT_BYTES:
        raise InvalidArgument(field, f"is larger than {MAX_STRUCT_BYTES} bytes")
    return data


def _stamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class StorageServicer(storage_pb2_grpc.StorageServicer):  # type: ignore[misc]
    def __init__(
        self, files: BlobFiles, options: StorageOptions, audit: AuditPublisher | None
    ) -> None:
        self._use(files)
        self._options = options
        self._audit = audit
        self._lock = asyncio.Lock()  # registry changes that read then write

    def _use(self, files: BlobFiles) -> None:
        self._files = files
        self._meta = files.metadata

    def _record(self, tenant: str, action: str, resource: str, detail: str = "") -> None:
        if self._audit is None:
            return
        record = new_record("storage", action)
        record.tenant = tenant
        record.resource = resource
        record.outcome = "OK"
        record.detail = detail
        self._audit.record(record)

    # -- blobs ---------------------------------------------------------------------------

    async def GetStorageStats(
        self, request: storage_pb2.GetStorageStatsRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.StorageStats:
        blobs, stored, models = self._meta.stats()
        return storage_pb2.StorageStats(blob_count=blobs, stored_bytes=stored, model_count=models)

    async def UploadBlob(
        self,
        requests: AsyncIterator[storage_pb2.UploadBlobRequest],
        context: grpc.aio.ServicerContext,
    ) -> storage_pb2.Blob:
        upload: Upload | None = None
        try:
            async for request in requests:
                if upload is None:
                    upload = await self._begin(request)
                    continue
                await self._receive(upload, request)
        except InvalidArgument:
            if upload is not None:  # bad data: nothing of it stays
                upload.close()
                await asyncio.to_thread(
                    self._files.discard, upload.row.tenant, upload.row.upload_id
                )
            raise
        except BaseException:  # the stream broke: what was written stays for a resume
            if upload is not None:
                upload.close()
            raise
        if upload is None:
            raise InvalidArgument("start", "the stream was empty: send an UploadStart first")
        row = upload.row
        if not self._files.complete(upload):
            upload.close()
            raise FailedPrecondition(
                f"upload {row.upload_id!r} is incomplete: {upload.received} of {row.size} "
                "bytes stored; send the rest from there with the same upload_id"
            )
        try:
            sha256, deduplicated = await asyncio.to_thread(self._files.finish, upload)
        except DigestMismatch as exc:
            raise InvalidArgument("start.sha256", f"{exc}; nothing was stored") from None
        self._record(row.tenant, "storage.blob.write", f"blob/{sha256}", f"{row.size} bytes")
        return storage_pb2.Blob(
            tenant=row.tenant, sha256=sha256, size=row.size, deduplicated=deduplicated
        )

    async def _receive(self, upload: Upload, request: storage_pb2.UploadBlobRequest) -> None:
        if request.WhichOneof("part") != "data":
            raise InvalidArgument("start", "may only be sent first")
        expected = upload.received + len(upload.pending)
        if request.offset != expected:
            raise InvalidArgument(
                "offset",
                f"chunk out of order: it starts at {request.offset}, but {expected} bytes "
                "have been received",
            )
        try:
            await asyncio.to_thread(self._files.write, upload, request.data)
        except ValueError as exc:
            raise InvalidArgument("data", str(exc)) from None

    async def _begin(self, request: storage_pb2.UploadBlobRequest) -> Upload:
        if request.WhichOneof("part") != "start":
            raise InvalidArgument("start", "the first message must be an UploadStart")
        start = request.start
        tenant = check_tenant(start.tenant)
        if not UPLOAD_ID.match(start.upload_id):
            raise InvalidArgument("start.upload_id", "must be 8-64 of A-Z a-z 0-9 _ -")
        if not 0 <= start.size <= MAX_BLOB:
            raise InvalidArgument("start.size", f"must be between 0 and {MAX_BLOB}")
        if start.sha256:
            check_sha256(start.sha256, "start.sha256")
        existing = self._meta.upload(tenant, start.upload_id)
        if existing is not None and (
            existing.size != start.size or existing.expected_sha256 != start.sha256
        ):
            raise FailedPrecondition(
                f"upload {start.upload_id!r} was started with another size or digest"
            )
        if existing is None:
            used = self._meta.tenant_bytes(tenant)
            limit = self._meta.quota(tenant, self._options.tenant_quota_bytes)
            if used + start.size > limit:
                raise ResourceExhausted(
                    f"tenant {tenant!r} would store {used + start.size} bytes, over its quota "
                    f"of {limit}"
                )
        return await asyncio.to_thread(
            self._files.begin, tenant, start.upload_id, start.size, start.sha256
        )

    async def GetUpload(
        self, request: storage_pb2.GetUploadRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.UploadStatus:
        tenant = check_tenant(request.tenant)
        row = self._meta.upload(tenant, request.upload_id)
        if row is None:
            raise NotFound(f"no upload {request.upload_id!r} is in progress")
        upload = await asyncio.to_thread(
            self._files.begin, tenant, request.upload_id, row.size, row.expected_sha256
        )
        return storage_pb2.UploadStatus(
            upload_id=row.upload_id, received=upload.received, size=row.size
        )

    async def DownloadBlob(
        self, request: storage_pb2.DownloadBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[storage_pb2.BlobChunk]:
        tenant = check_tenant(request.tenant)
        sha256 = check_sha256(request.sha256)
        row = self._meta.blob(tenant, sha256)
        if row is None:
            raise NotFound(f"blob {sha256} does not exist")
        if not 0 <= request.offset <= row.size:
            raise InvalidArgument("offset", f"must be between 0 and the size, {row.size}")
        chunks = self._files.read(tenant, sha256, request.offset, group=DOWNLOAD_GROUP)
        offset = request.offset
        while True:
            chunk = await asyncio.to_thread(_next_chunk, chunks)
            if chunk is None:
                return
            yield storage_pb2.BlobChunk(offset=offset, data=chunk)
            offset += len(chunk)

    async def DeleteBlob(
        self, request: storage_pb2.DownloadBlobRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Blob:
        tenant = check_tenant(request.tenant)
        sha256 = check_sha256(request.sha256)
        async with self._lock:
            row = self._meta.blob(tenant, sha256)
            if row is None:
                raise NotFound(f"blob {sha256} does not exist")
            users = self._meta.references(tenant, sha256)
            if users:
                raise FailedPrecondition(
                    f"blob {sha256} is used by {users} dataset(s) or model file(s); delete those"
                )
            self._files.remove(tenant, sha256)
        self._record(tenant, "storage.blob.delete", f"blob/{sha256}")
        return storage_pb2.Blob(tenant=tenant, sha256=sha256, size=row.size)

    # -- datasets ------------------------------------------------------------------------

    async def CreateDataset(
        self, request: storage_pb2.CreateDatasetRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Dataset:
        tenant = check_tenant(request.tenant)
        name = check_name(request.name, "name")
        sha256 = check_sha256(request.sha256)
        if len(request.description) > 1000:
            raise InvalidArgument("description", "is longer than 1000 characters")
        blob = self._meta.blob(tenant, sha256)
        if blob is None:
            raise NotFound(f"blob {sha256} does not exist; upload the data first")
        records = await asyncio.to_thread(self._count_lines, tenant, sha256)
        row = DatasetRow(tenant, name, sha256, blob.size, records, request.description, 0.0)
        async with self._lock:
            if self._meta.dataset(tenant, name) is not None:
                raise FailedPrecondition(f"dataset {name!r} already exists; delete it first")
            row = dataclasses.replace(row, created=time.time())
            self._meta.put_dataset(row)
        self._record(tenant, "storage.dataset.create", f"dataset/{name}", sha256)
        return _dataset(row)

    def _count_lines(self, tenant: str, sha256: str) -> int:
        lines, last = 0, b"\n"
        for chunk in self._data(tenant, sha256):
            lines += chunk.count(b"\n")
            last = chunk[-1:] or last
        return lines + (0 if last == b"\n" else 1)

    def _data(self, tenant: str, sha256: str) -> Iterator[bytes]:
        try:
            yield from self._files.read(tenant, sha256)
        except Corrupt as exc:
            raise DataLoss(f"blob {sha256} is damaged: {exc}") from None

    async def GetDataset(
        self, request: storage_pb2.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Dataset:
        return _dataset(self._dataset(request))

    def _dataset(self, request: storage_pb2.GetDatasetRequest) -> DatasetRow:
        tenant = check_tenant(request.tenant)
        row = self._meta.dataset(tenant, check_name(request.name, "name"))
        if row is None:
            raise NotFound(f"dataset {request.name!r} does not exist")
        return row

    async def ListDatasets(
        self, request: storage_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ListDatasetsResponse:
        rows = self._meta.datasets(check_tenant(request.tenant))
        return storage_pb2.ListDatasetsResponse(datasets=[_dataset(r) for r in rows])

    async def DeleteDataset(
        self, request: storage_pb2.GetDatasetRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Dataset:
        async with self._lock:
            row = self._dataset(request)
            self._meta.delete_dataset(row.tenant, row.name)
            self._release(row.tenant, row.sha256)
        self._record(row.tenant, "storage.dataset.delete", f"dataset/{row.name}", row.sha256)
        return _dataset(row)

    def _release(self, tenant: str, sha256: str) -> None:
        """Delete a blob once nothing refers to it (really gone: row and file)."""
        if self._meta.references(tenant, sha256) == 0 and self._meta.blob(tenant, sha256):
            self._files.remove(tenant, sha256)

    # -- model registry ------------------------------------------------------------------

    async def CreateModelVersion(
        self, request: storage_pb2.CreateModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ModelVersion:
        tenant = check_tenant(request.tenant)
        model = check_name(request.model, "model")
        if not request.files:
            raise InvalidArgument("files", "a model version needs at least one file")
        for path, sha256 in request.files.items():
            if not FILE_PATH.match(path) or ".." in path.split("/"):
                raise InvalidArgument("files", f"{path!r} is not a relative file path")
            check_sha256(sha256, f"files[{path}]")
            if self._meta.blob(tenant, sha256) is None:
                raise NotFound(f"files[{path}]: blob {sha256} does not exist; upload it first")
        metadata = check_struct(request.metadata, "metadata")
        lineage = check_struct(request.lineage, "lineage")
        if "config.json" in request.files:
            derived = await asyncio.to_thread(self._describe, tenant, request.files["config.json"])
            metadata = {**derived, **metadata}
        async with self._lock:
            version = self._meta.add_version(tenant, model, dict(request.files), metadata, lineage)
        self._record(tenant, "storage.model.create", f"model/{model}/{version}")
        return self._version(tenant, model, version)

    def _describe(self, tenant: str, config_sha256: str) -> dict[str, Any]:
        """Metadata read from a Hugging Face config.json."""
        raw = b"".join(self._data(tenant, config_sha256))
        try:
            config = json.loads(raw)
        except ValueError:
            raise InvalidArgument("files[config.json]", "is not JSON") from None
        if not isinstance(config, dict):
            raise InvalidArgument("files[config.json]", "is not a JSON object")
        hidden = config.get("hidden_size")
        layers = config.get("num_hidden_layers")
        vocab = config.get("vocab_size")
        described: dict[str, Any] = {
            "architecture": (config.get("architectures") or [config.get("model_type", "")])[0],
            "context_length": config.get("max_position_embeddings"),
            "quantization": (config.get("quantization_config") or {}).get("quant_method", "none"),
            "tokenizer": "tokenizer.json",
        }
        if isinstance(hidden, int) and isinstance(layers, int) and isinstance(vocab, int):
            inter = int(config.get("intermediate_size", 4 * hidden))
            described["parameters"] = parameter_count(vocab, hidden, inter, layers)
            described.update(hidden_size=hidden, num_hidden_layers=layers, vocab_size=vocab)
        return {k: v for k, v in described.items() if v is not None}

    def _version(self, tenant: str, model: str, version: int) -> storage_pb2.ModelVersion:
        row = self._meta.version(tenant, model, version)
        assert row is not None
        return _model_version(row)

    def _find(self, request: storage_pb2.GetModelVersionRequest) -> VersionRow:
        """The version asked for, by number, alias or latest; the caller's own models
        first, then the shared (system) ones."""
        tenant = check_tenant(request.tenant)
        model = check_name(request.model, "model")
        if request.version < 0:
            raise InvalidArgument("version", "must be positive")
        if request.alias:
            check_name(request.alias, "alias")
        for owner in dict.fromkeys((tenant, SYSTEM_TENANT)):
            number = request.version
            if request.alias:
                number = self._meta.alias(owner, model, request.alias) or 0
                if not number:
                    continue
            elif not number:
                live = self._meta.versions(owner, model)
                if not live:
                    continue
                number = live[-1].version
            row = self._meta.version(owner, model, number)
            if row is None:
                continue
            if row.deleted:
                raise NotFound(f"version {number} of model {model!r} was deleted")
            return row
        what = f"alias {request.alias!r}" if request.alias else f"version {request.version}"
        if not request.alias and not request.version:
            what = "any version"
        raise NotFound(f"model {model!r} has no {what}")

    async def GetModelVersion(
        self, request: storage_pb2.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ModelVersion:
        return _model_version(self._find(request))

    async def ListModelVersions(
        self, request: storage_pb2.ListModelVersionsRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ListModelVersionsResponse:
        tenant = check_tenant(request.tenant)
        if request.model:
            model = check_name(request.model, "model")
            rows = self._meta.versions(tenant, model) or self._meta.versions(SYSTEM_TENANT, model)
        else:
            rows = []
            for owner in dict.fromkeys((tenant, SYSTEM_TENANT)):
                rows += [self._meta.versions(owner, m)[-1] for m in self._meta.models(owner)]
        return storage_pb2.ListModelVersionsResponse(versions=[_model_version(r) for r in rows])

    async def SetAlias(
        self, request: storage_pb2.SetAliasRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ModelVersion:
        tenant = check_tenant(request.tenant)
        model = check_name(request.model, "model")
        alias = check_name(request.alias, "alias")
        async with self._lock:
            row = self._meta.version(tenant, model, request.version)
            if row is None:
                raise NotFound(f"model {model!r} has no version {request.version}")
            if row.deleted:
                raise FailedPrecondition(
                    f"version {request.version} of model {model!r} was deleted; an alias "
                    "cannot point at it"
                )
            previous = self._meta.set_alias(tenant, model, alias, request.version)
        self._record(
            tenant, "storage.model.alias", f"model/{model}@{alias}",
            f"moved from version {previous or 'none'} to {request.version}",
        )  # fmt: skip
        return self._version(tenant, model, request.version)

    async def DeleteModelVersion(
        self, request: storage_pb2.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ModelVersion:
        tenant = check_tenant(request.tenant)
        async with self._lock:
            row = self._find(request)
            if row.tenant != tenant:
                raise NotFound(f"model {row.model!r} has no version of tenant {tenant!r}")
            self._meta.delete_version(tenant, row.model, row.version)
            for sha256 in set(row.files.values()):
                self._release(tenant, sha256)
        self._record(tenant, "storage.model.delete", f"model/{row.model}/{row.version}")
        return _model_version(row)

    # -- operations ----------------------------------------------------------------------

    def close(self) -> None:
        self._meta.close()

    async def SetStorageQuota(
        self, request: storage_pb2.SetStorageQuotaRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.StorageQuota:
        tenant = check_tenant(request.tenant)
        if request.bytes < 0:
            raise InvalidArgument("bytes", "must not be negative")
        self._meta.set_quota(tenant, request.bytes)
        self._record(tenant, "storage.quota.set", f"tenant/{tenant}", f"{request.bytes} bytes")
        return storage_pb2.StorageQuota(
            tenant=tenant, bytes=request.bytes, used_bytes=self._meta.tenant_bytes(tenant)
        )

    async def RotateStorageKey(
        self, request: storage_pb2.RotateStorageKeyRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.RotateStorageKeyResponse:
        async with self._lock:
            new_id, count = await asyncio.to_thread(rotate_key, self._files)
        self._record(SYSTEM_TENANT, "storage.key.rotate", f"kek/{new_id}", f"{count} re-wrapped")
        return storage_pb2.RotateStorageKeyResponse(key_id=new_id, rewrapped=count)

    async def BackupStorage(
        self, request: storage_pb2.BackupStorageRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.BackupStorageResponse:
        if not request.path or not Path(request.path).is_absolute():
            raise InvalidArgument("path", "must be an absolute path on the storage host")
        target = Path(request.path)
        if await asyncio.to_thread(target.exists):
            raise FailedPrecondition(f"{target} exists; a backup goes into a new directory")
        async with self._lock:  # no blob is deleted while the snapshot is taken
            blobs, size = await asyncio.to_thread(backup, self._files, target)
        self._record(SYSTEM_TENANT, "storage.backup", str(target), f"{blobs} blobs")
        return storage_pb2.BackupStorageResponse(path=str(target), blobs=blobs, bytes=size)

    async def RestoreStorage(
        self, request: storage_pb2.RestoreStorageRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.BackupStorageResponse:
        source = Path(request.path)
        if not request.path or not source.is_absolute():
            raise InvalidArgument("path", "must be an absolute path on the storage host")
        if not await asyncio.to_thread((source / "manifest.json").is_file):
            raise NotFound(f"{source} is not a storage backup (no manifest.json)")
        async with self._lock:
            blobs, _, models = self._meta.stats()
            if blobs or models or self._meta.uploads():
                raise FailedPrecondition(
                    "this storage already holds data; restore into a fresh storage service"
                )
            files = await asyncio.to_thread(reopen_restored, self._files, source, self._options)
            self._use(files)
        count, size, _ = files.metadata.stats()
        self._record(SYSTEM_TENANT, "storage.restore", str(source), f"{count} blobs")
        return storage_pb2.BackupStorageResponse(path=str(source), blobs=count, bytes=size)


def reopen_restored(files: BlobFiles, source: Path, options: StorageOptions) -> BlobFiles:
    """Swap an empty store for the backup's contents and open them."""
    root = files.root
    files.metadata.close()
    for suffix in ("", "-wal", "-shm"):
        (root / f"metadata.sqlite{suffix}").unlink(missing_ok=True)
    shutil.rmtree(root / "keys", ignore_errors=True)
    restore(source, root)
    metadata = Metadata(root / "metadata.sqlite")
    return BlobFiles(root, metadata, KeyEncryptionKeys(root / "keys", options.kek_file))


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    try:
        return next(chunks)
    except StopIteration:
        return None
    except Corrupt as exc:
        raise DataLoss(f"stored data is damaged and was not served: {exc}") from None


def _dataset(row: DatasetRow) -> storage_pb2.Dataset:
    return storage_pb2.Dataset(
        tenant=row.tenant, name=row.name, sha256=row.sha256, size=row.size,
        records=row.records, description=row.description, created_at=_stamp(row.created),
    )  # fmt: skip


def _model_version(row: VersionRow) -> storage_pb2.ModelVersion:
    message = storage_pb2.ModelVersion(
        tenant=row.tenant, model=row.model, version=row.version, files=row.files,
        aliases=list(row.aliases), created_at=_stamp(row.created),
    )  # fmt: skip
    message.metadata.update(row.metadata)
    message.lineage.update(row.lineage)
    return message


def rotate_key(files: BlobFiles) -> tuple[str, int]:
    """A new KEK; every data key re-wrapped under it (the data is not touched); KEKs no
    longer used are deleted. Reads go on throughout: each row switches atomically."""
    keys, meta = files.keys, files.metadata
    old = keys.active_id
    new_id = keys.create()
    count = 0
    for blob in meta.blobs():
        if blob.kek_id != new_id:
            kek_id, wrapped = keys.wrap(keys.unwrap(blob.kek_id, blob.wrapped_key))
            meta.rewrap(blob.tenant, blob.sha256, kek_id, wrapped)
            count += 1
    for upload in meta.uploads():
        if upload.kek_id != new_id:
            kek_id, wrapped = keys.wrap(keys.unwrap(upload.kek_id, upload.wrapped_key))
            meta.rewrap_upload(upload.tenant, upload.upload_id, kek_id, wrapped)
            count += 1
    in_use = meta.kek_ids_in_use()
    for kek_id in {old} - in_use:
        keys.retire(kek_id)
    return new_id, count


def backup(files: BlobFiles, target: Path) -> tuple[int, int]:
    """Metadata snapshot (SQLite online backup) + the blob files it names, still
    encrypted, + the key files (a backup is useless without them; keep it as safe)."""
    target.mkdir(parents=True)
    target.chmod(0o700)
    files.metadata.backup_to(target / "metadata.sqlite")
    snapshot = Metadata(target / "metadata.sqlite")
    try:
        rows = snapshot.blobs()
    finally:
        snapshot.close()
    size = 0
    for row in rows:
        source = files.blob_path(row.tenant, row.sha256)
        destination = target / source.relative_to(files.root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        size += destination.stat().st_size
    shutil.copytree(files.keys.directory, target / "keys")
    manifest = {"blobs": len(rows), "bytes": size, "digest": _manifest_digest(rows)}
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return len(rows), size


def _manifest_digest(rows: list[Any]) -> str:
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: (r.tenant, r.sha256)):
        digest.update(f"{row.tenant}/{row.sha256}/{row.size}\n".encode())
    return digest.hexdigest()


def restore(source: Path, root: Path) -> int:
    """Bring a storage directory that has no data yet back to a backup."""
    if (root / "metadata.sqlite").exists():
        raise FileExistsError(f"{root} already holds storage data; restore into a fresh one")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "metadata.sqlite", root / "metadata.sqlite")
    if (source / "blobs").is_dir():
        shutil.copytree(source / "blobs", root / "blobs", dirs_exist_ok=True)
    shutil.copytree(source / "keys", root / "keys", dirs_exist_ok=True)
    return int(json.loads((source / "manifest.json").read_text())["blobs"])


async def attach(ctx: ServiceContext, server: grpc.aio.Server, stack: AsyncExitStack) -> list[str]:
    """Open the store (sweeping what a crash left) and serve the API."""
    options: StorageOptions = ctx.options
    root = options.root(ctx.settings.data_dir)
    metadata = Metadata(root / "metadata.sqlite")
    keys = KeyEncryptionKeys(root / "keys", options.kek_file)
    files = BlobFiles(root, metadata, keys)
    await asyncio.to_thread(files.sweep)
    audit = AuditPublisher(ctx.nats.jetstream(), "storage")
    audit.start()
    stack.push_async_callback(audit.close)
    servicer = StorageServicer(files, options, audit)
    stack.callback(servicer.close)
    storage_pb2_grpc.add_StorageServicer_to_server(servicer, server)
    return [storage_pb2.DESCRIPTOR.services_by_name["Storage"].full_name]
