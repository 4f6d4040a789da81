"""Storage as its callers see it: chunked uploads that resume, verified downloads,
encryption at rest (a flipped byte is DATA_LOSS), key rotation without re-encryption,
datasets, the model registry, quotas, tenant isolation, backup and restore, and kill -9
mid-upload and mid-registry-change. A real storage process on real NATS and Redis."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from llmos.usage import peak_resident_mb
from llmos.v1 import storage_pb2, storage_pb2_grpc
from services.storage.blobs import tenant_directory
from tests.conftest import ROOT
from tests.integration.conftest import ServiceUnderTest, gateway_env, start_service
from tools.devstack.infra import NatsServer, RedisServer

MIB = 1 << 20


@dataclass
class StorageProcess(ServiceUnderTest):
    root: Path

    def stub(self) -> storage_pb2_grpc.StorageStub:
        return storage_pb2_grpc.StorageStub(self.channel())


def start_storage(env: dict[str, str], root: Path) -> StorageProcess:
    service = start_service(
        "services.storage", {**env, "LLMOS_STORAGE_DIR": str(root)}, root.parent
    )
    return StorageProcess(service.proc, service.address, env, service.log_path, root)


@pytest.fixture(scope="module")
def storage_env(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    data = tmp_path_factory.mktemp("storage-data")
    return {**gateway_env(nats_server, own_redis), "LLMOS_DATA_DIR": str(data)}


@pytest.fixture(scope="module")
def storage(
    storage_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StorageProcess]:
    process = start_storage(storage_env, tmp_path_factory.mktemp("store") / "root")
    try:
        yield process
    finally:
        process.stop()


def requests(
    tenant: str,
    data: bytes,
    upload_id: str = "",
    sha256: str | None = None,
    start_at: int = 0,
    stop_at: int | None = None,
    piece: int = 300_000,
) -> Iterator[storage_pb2.UploadBlobRequest]:
    """An upload's messages: the start, then `data[start_at:stop_at]` in pieces."""
    yield storage_pb2.UploadBlobRequest(
        start=storage_pb2.UploadStart(
            tenant=tenant,
            upload_id=upload_id or uuid.uuid4().hex,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
        )
    )
    end = len(data) if stop_at is None else stop_at
    for offset in range(start_at, end, piece):
        yield storage_pb2.UploadBlobRequest(
            data=data[offset : min(offset + piece, end)], offset=offset
        )


def upload(stub: storage_pb2_grpc.StorageStub, tenant: str, data: bytes) -> storage_pb2.Blob:
    blob: storage_pb2.Blob = stub.UploadBlob(requests(tenant, data), timeout=60)
    return blob


def download(
    stub: storage_pb2_grpc.StorageStub, tenant: str, sha256: str, offset: int = 0
) -> bytes:
    request = storage_pb2.DownloadBlobRequest(tenant=tenant, sha256=sha256, offset=offset)
    return b"".join(c.data for c in stub.DownloadBlob(request, timeout=60))


def refused(call: object, code: grpc.StatusCode, sentence: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code() == code, caught.value.details()
    assert sentence in (caught.value.details() or ""), caught.value.details()


def test_a_blob_round_trips_encrypted_and_is_stored_once_per_tenant(
    storage: StorageProcess,
) -> None:
    stub = storage.stub()
    data = os.urandom(3 * MIB + 12345)
    blob = upload(stub, "lab-a", data)
    assert blob.sha256 == hashlib.sha256(data).hexdigest() and blob.size == len(data)
    assert not blob.deduplicated
    assert download(stub, "lab-a", blob.sha256) == data
    assert download(stub, "lab-a", blob.sha256, offset=MIB + 7) == data[MIB + 7 :]
    assert upload(stub, "lab-a", data).deduplicated
    on_disk = storage.root / "blobs" / tenant_directory("lab-a") / blob.sha256[:2] / blob.sha256
    raw = on_disk.read_bytes()
    assert data[:64] not in raw and len(raw) == len(data) + 4 * 16  # sealed, 4 chunks
    # another tenant neither sees it nor shares its copy
    refused(
        lambda: download(stub, "lab-b", blob.sha256), grpc.StatusCode.NOT_FOUND, "does not exist"
    )
    assert not upload(stub, "lab-b", data).deduplicated
    assert (
        upload(stub, "lab-a", b"").size == 0
        and download(stub, "lab-a", hashlib.sha256(b"").hexdigest()) == b""
    )


def test_a_broken_upload_resumes_where_it_stopped(storage: StorageProcess) -> None:
    stub = storage.stub()
    data = os.urandom(5 * MIB + 99)
    upload_id = uuid.uuid4().hex
    refused(
        lambda: stub.UploadBlob(requests("lab-a", data, upload_id, stop_at=3 * MIB + 5)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "is incomplete: 3145728 of 5242979 bytes stored",
    )
    status = stub.GetUpload(storage_pb2.GetUploadRequest(tenant="lab-a", upload_id=upload_id))
    assert status.received == 3 * MIB and status.size == len(data)
    blob = stub.UploadBlob(requests("lab-a", data, upload_id, start_at=status.received))
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert download(stub, "lab-a", blob.sha256) == data
    refused(
        lambda: stub.GetUpload(storage_pb2.GetUploadRequest(tenant="lab-a", upload_id=upload_id)),
        grpc.StatusCode.NOT_FOUND,
        "is in progress",
    )


def test_bad_uploads_are_refused_and_leave_nothing_behind(storage: StorageProcess) -> None:
    stub = storage.stub()
    data = os.urandom(2 * MIB)
    wrong = "0" * 64
    before = stub.GetStorageStats(storage_pb2.GetStorageStatsRequest())
    upload_id = uuid.uuid4().hex
    refused(
        lambda: stub.UploadBlob(requests("lab-a", data, upload_id, sha256=wrong)),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"start.sha256: the data hashes to {hashlib.sha256(data).hexdigest()}, not the {wrong}",
    )
    refused(
        lambda: stub.GetUpload(storage_pb2.GetUploadRequest(tenant="lab-a", upload_id=upload_id)),
        grpc.StatusCode.NOT_FOUND,
        "no upload",
    )

    def out_of_order() -> Iterator[storage_pb2.UploadBlobRequest]:
        messages = list(requests("lab-a", data))
        yield from [messages[0], messages[2], messages[1]]

    refused(
        lambda: stub.UploadBlob(out_of_order()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "offset: chunk out of order: it starts at 300000, but 0 bytes have been received",
    )
    refused(
        lambda: stub.UploadBlob(iter([storage_pb2.UploadBlobRequest(data=b"x")])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "start: the first message must be an UploadStart",
    )
    refused(
        lambda: stub.UploadBlob(requests("lab-a", data, upload_id="../../x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "start.upload_id: must be 8-64",
    )

    def too_much() -> Iterator[storage_pb2.UploadBlobRequest]:
        yield from requests("lab-a", b"abc")
        yield storage_pb2.UploadBlobRequest(data=b"more", offset=3)

    refused(lambda: stub.UploadBlob(too_much()), grpc.StatusCode.INVALID_ARGUMENT,
            "data: more data than the 3 bytes announced")  # fmt: skip
    after = stub.GetStorageStats(storage_pb2.GetStorageStatsRequest())
    assert after.blob_count == before.blob_count and after.stored_bytes == before.stored_bytes
    db = sqlite3.connect(storage.root / "metadata.sqlite")
    pending = db.execute("SELECT COUNT(*) FROM uploads WHERE tenant='lab-a'").fetchone()
    db.close()
    uploads = storage.root / "uploads" / tenant_directory("lab-a")
    assert pending == (0,) and not list(uploads.iterdir())  # no half-written upload stays


def test_a_quota_is_enforced_before_any_byte_is_stored(storage: StorageProcess) -> None:
    stub = storage.stub()
    quota = stub.SetStorageQuota(storage_pb2.SetStorageQuotaRequest(tenant="lab-q", bytes=MIB))
    assert quota.used_bytes == 0
    upload(stub, "lab-q", os.urandom(MIB // 2))
    refused(
        lambda: upload(stub, "lab-q", os.urandom(MIB)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "tenant 'lab-q' would store 1572864 bytes, over its quota of 1048576",
    )


def test_a_flipped_byte_on_disk_is_data_loss_and_never_served(storage: StorageProcess) -> None:
    stub = storage.stub()
    data = os.urandom(3 * MIB)
    blob = upload(stub, "lab-t", data)
    path = storage.root / "blobs" / tenant_directory("lab-t") / blob.sha256[:2] / blob.sha256
    raw = bytearray(path.read_bytes())
    raw[MIB + 16 + 1000] ^= 0x01  # a byte in the second chunk
    path.write_bytes(bytes(raw))
    request = storage_pb2.DownloadBlobRequest(tenant="lab-t", sha256=blob.sha256)
    served = []
    with pytest.raises(grpc.RpcError) as caught:
        for chunk in stub.DownloadBlob(request):
            served.append(chunk.data)
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert "stored data is damaged and was not served: chunk 1 failed authentication" in (
        caught.value.details() or ""
    )
    sent = b"".join(served)
    assert len(sent) <= MIB and data.startswith(sent)  # at most the intact first chunk


def test_datasets_are_described_listed_isolated_and_really_deleted(storage: StorageProcess) -> None:
    stub = storage.stub()
    text = b"".join(b"line %d of the corpus\n" % i for i in range(1000)) + b"no newline"
    blob = upload(stub, "lab-d", text)
    dataset = stub.CreateDataset(
        storage_pb2.CreateDatasetRequest(tenant="lab-d", name="corpus", sha256=blob.sha256)
    )
    assert (dataset.size, dataset.records, dataset.sha256) == (len(text), 1001, blob.sha256)
    get = storage_pb2.GetDatasetRequest(tenant="lab-d", name="corpus")
    assert stub.GetDataset(get) == dataset
    listed = stub.ListDatasets(storage_pb2.ListDatasetsRequest(tenant="lab-d"))
    assert [d.name for d in listed.datasets] == ["corpus"]
    theirs = storage_pb2.GetDatasetRequest(tenant="lab-e", name="corpus")
    refused(lambda: stub.GetDataset(theirs), grpc.StatusCode.NOT_FOUND, "does not exist")
    assert not stub.ListDatasets(storage_pb2.ListDatasetsRequest(tenant="lab-e")).datasets
    refused(  # another tenant cannot adopt the blob by its digest
        lambda: stub.CreateDataset(
            storage_pb2.CreateDatasetRequest(tenant="lab-e", name="stolen", sha256=blob.sha256)
        ),
        grpc.StatusCode.NOT_FOUND,
        "does not exist; upload the data first",
    )
    refused(
        lambda: stub.CreateDataset(
            storage_pb2.CreateDatasetRequest(tenant="lab-d", name="../etc", sha256=blob.sha256)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "name: '../etc' is not a name",
    )
    stub.DeleteDataset(get)
    refused(lambda: stub.GetDataset(get), grpc.StatusCode.NOT_FOUND, "does not exist")
    refused(
        lambda: download(stub, "lab-d", blob.sha256), grpc.StatusCode.NOT_FOUND, "does not exist"
    )
    path = storage.root / "blobs" / tenant_directory("lab-d") / blob.sha256[:2] / blob.sha256
    assert not path.exists()


def model_files(stub: storage_pb2_grpc.StorageStub, tenant: str, seed: int) -> dict[str, str]:
    config = (
        b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,'
        b' "num_hidden_layers": 2, "vocab_size": 256, "intermediate_size": 172,'
        b' "max_position_embeddings": 512}'
    )
    weights = hashlib.sha256(b"%d" % seed).digest() * 1000
    return {
        "config.json": upload(stub, tenant, config).sha256,
        "model.safetensors": upload(stub, tenant, weights).sha256,
    }


def test_the_registry_numbers_versions_moves_aliases_and_keeps_lineage(
    storage: StorageProcess,
) -> None:
    stub = storage.stub()
    lineage = Struct()
    lineage.update({"parent": "base@1", "dataset": "ab" * 32, "job": "job-1"})
    first = stub.CreateModelVersion(
        storage_pb2.CreateModelVersionRequest(
            tenant="lab-m", model="tiny", files=model_files(stub, "lab-m", 1), lineage=lineage
        )
    )
    assert first.version == 1
    assert first.metadata["architecture"] == "LlamaForCausalLM"
    assert first.metadata["context_length"] == 512 and first.metadata["parameters"] > 0
    assert first.lineage["job"] == "job-1"
    second = stub.CreateModelVersion(
        storage_pb2.CreateModelVersionRequest(
            tenant="lab-m", model="tiny", files=model_files(stub, "lab-m", 2)
        )
    )
    assert second.version == 2
    alias = storage_pb2.SetAliasRequest(tenant="lab-m", model="tiny", alias="production")
    alias.version = 1
    assert stub.SetAlias(alias).aliases == ["production"]
    alias.version = 2
    stub.SetAlias(alias)
    by_alias = storage_pb2.GetModelVersionRequest(tenant="lab-m", model="tiny", alias="production")
    assert stub.GetModelVersion(by_alias).version == 2
    latest = storage_pb2.GetModelVersionRequest(tenant="lab-m", model="tiny")
    assert stub.GetModelVersion(latest).version == 2
    stub.DeleteModelVersion(
        storage_pb2.GetModelVersionRequest(tenant="lab-m", model="tiny", version=2)
    )
    refused(
        lambda: stub.GetModelVersion(by_alias),
        grpc.StatusCode.NOT_FOUND,
        "has no alias 'production'",
    )
    refused(
        lambda: stub.SetAlias(alias),
        grpc.StatusCode.FAILED_PRECONDITION,
        "was deleted; an alias cannot point at it",
    )
    refused(
        lambda: stub.GetModelVersion(
            storage_pb2.GetModelVersionRequest(tenant="lab-m", model="tiny", version=2)
        ),
        grpc.StatusCode.NOT_FOUND,
        "version 2 of model 'tiny' was deleted",
    )
    assert stub.GetModelVersion(latest).version == 1
    third = stub.CreateModelVersion(
        storage_pb2.CreateModelVersionRequest(
            tenant="lab-m", model="tiny", files=model_files(stub, "lab-m", 3)
        )
    )
    assert third.version == 3  # numbers are never reused
    # other tenants see none of it
    other = storage_pb2.GetModelVersionRequest(tenant="lab-n", model="tiny", version=1)
    refused(
        lambda: stub.GetModelVersion(other),
        grpc.StatusCode.NOT_FOUND,
        "model 'tiny' has no version 1",
    )


@pytest.mark.parametrize(
    ("change", "code", "sentence"),
    [
        (
            {"model": "../../etc"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "model: '../../etc' is not a name",
        ),
        (
            {"files": {"../weights": "a" * 64}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "is not a relative file path",
        ),
        ({"files": {"w.bin": "a" * 64}}, grpc.StatusCode.NOT_FOUND, "files[w.bin]: blob aaaa"),
        (
            {"files": {}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "files: a model version needs at least one file",
        ),
        (
            {"metadata": {"notes": "x" * 70_000}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "metadata: is larger than 65536 bytes",
        ),
    ],
    ids=["traversal", "file traversal", "unknown blob", "no files", "oversized metadata"],
)
def test_bad_model_versions_are_refused(
    storage: StorageProcess, change: dict[str, object], code: grpc.StatusCode, sentence: str
) -> None:
    stub = storage.stub()
    request = storage_pb2.CreateModelVersionRequest(tenant="lab-x", model="good")
    files = change.get("files", {"config.json": upload(stub, "lab-x", b"{}").sha256})
    assert isinstance(files, dict)
    request.files.update(files)
    if "model" in change:
        request.model = str(change["model"])
    if "metadata" in change:
        request.metadata.update(change["metadata"])  # type: ignore[arg-type]
    refused(lambda: stub.CreateModelVersion(request), code, sentence)
    assert not stub.ListModelVersions(storage_pb2.ListModelVersionsRequest(tenant="lab-x")).versions


def test_key_rotation_rewraps_every_key_without_touching_data(storage: StorageProcess) -> None:
    stub = storage.stub()
    data = os.urandom(MIB + 5)
    blob = upload(stub, "lab-k", data)
    path = storage.root / "blobs" / tenant_directory("lab-k") / blob.sha256[:2] / blob.sha256
    sealed_before = path.read_bytes()
    keys_before = set((storage.root / "keys").glob("kek-*.key"))
    stats = stub.GetStorageStats(storage_pb2.GetStorageStatsRequest())
    rotated = stub.RotateStorageKey(storage_pb2.RotateStorageKeyRequest())
    assert rotated.rewrapped >= stats.blob_count
    keys_after = set((storage.root / "keys").glob("kek-*.key"))
    assert keys_after == {storage.root / "keys" / f"kek-{rotated.key_id}.key"}
    assert not keys_before & keys_after  # the old key is gone: nothing needs it
    assert oct(next(iter(keys_after)).stat().st_mode & 0o777) == "0o600"
    assert path.read_bytes() == sealed_before  # data not re-encrypted
    assert download(stub, "lab-k", blob.sha256) == data
    db = sqlite3.connect(storage.root / "metadata.sqlite")
    kek_ids = {row[0] for row in db.execute("SELECT kek_id FROM blobs")}
    db.close()
    assert kek_ids == {rotated.key_id}


def test_backup_restores_a_fresh_storage_to_the_same_digests(
    storage: StorageProcess, tmp_path: Path
) -> None:
    stub = storage.stub()
    blob = upload(stub, "lab-b", os.urandom(MIB // 3))
    stub.CreateDataset(
        storage_pb2.CreateDatasetRequest(tenant="lab-b", name="kept", sha256=blob.sha256)
    )
    backup = stub.BackupStorage(storage_pb2.BackupStorageRequest(path=str(tmp_path / "backup")))
    assert backup.blobs >= 1
    refused(
        lambda: stub.BackupStorage(storage_pb2.BackupStorageRequest(path=str(tmp_path / "backup"))),
        grpc.StatusCode.FAILED_PRECONDITION,
        "exists; a backup goes into a new directory",
    )
    # online: a fresh storage service is brought back to the backup while it runs
    restored = start_storage(storage.env, tmp_path / "restored")
    try:
        again = restored.stub()
        answer = again.RestoreStorage(
            storage_pb2.RestoreStorageRequest(path=str(tmp_path / "backup"))
        )
        assert answer.blobs == backup.blobs
        refused(  # only into an empty one
            lambda: again.RestoreStorage(
                storage_pb2.RestoreStorageRequest(path=str(tmp_path / "backup"))
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "this storage already holds data",
        )
        _same_digests(storage, restored, backup.blobs)
        kept = again.GetDataset(storage_pb2.GetDatasetRequest(tenant="lab-b", name="kept"))
        assert kept.sha256 == blob.sha256
    finally:
        restored.stop()
    # offline: the restore tool fills a storage directory before the service starts
    command = ["-m", "services.storage.restore", str(tmp_path / "backup"), str(tmp_path / "cold")]
    result = subprocess.run(
        [sys.executable, *command], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    cold = start_storage(storage.env, tmp_path / "cold")
    try:
        _same_digests(storage, cold, backup.blobs)
    finally:
        cold.stop()


def _same_digests(original: StorageProcess, restored: StorageProcess, expected: int) -> None:
    """Every blob of the original is in the restored store, sealed bytes identical, and
    decrypts to its digest (the one damaged on purpose earlier is still caught)."""
    again = restored.stub()
    db = sqlite3.connect(original.root / "metadata.sqlite")
    originals = db.execute("SELECT tenant, sha256 FROM blobs").fetchall()
    db.close()
    count = again.GetStorageStats(storage_pb2.GetStorageStatsRequest()).blob_count
    assert count == len(originals) == expected
    for tenant, sha256 in originals:
        relative = Path("blobs", tenant_directory(tenant), sha256[:2], sha256)
        assert (restored.root / relative).read_bytes() == (original.root / relative).read_bytes()
        if tenant == "lab-t":  # damaged on purpose by the flipped-byte test: still caught
            refused(partial(download, again, "lab-t", sha256), grpc.StatusCode.DATA_LOSS, "")
            continue
        assert hashlib.sha256(download(again, tenant, sha256)).hexdigest() == sha256


def test_kill_9_mid_upload_and_mid_registry_change_leaves_old_or_new_state(
    storage_env: dict[str, str], tmp_path: Path
) -> None:
    process = start_storage(storage_env, tmp_path / "root")
    try:
        stub = process.stub()
        data = os.urandom(24 * MIB)
        upload_id = uuid.uuid4().hex
        files = model_files(stub, "lab-c", 1)
        made: list[int] = []
        stop = threading.Event()

        def registry_churn() -> None:
            while not stop.is_set():
                try:
                    version = stub.CreateModelVersion(
                        storage_pb2.CreateModelVersionRequest(
                            tenant="lab-c", model="m", files=files
                        )
                    ).version
                    made.append(version)
                    stub.SetAlias(
                        storage_pb2.SetAliasRequest(
                            tenant="lab-c", model="m", alias="live", version=version
                        )
                    )
                except grpc.RpcError:
                    return

        churn = threading.Thread(target=registry_churn)
        churn.start()

        def slow() -> Iterator[storage_pb2.UploadBlobRequest]:
            for message in requests("lab-c", data, upload_id, piece=MIB):
                yield message
                if message.offset >= 10 * MIB:
                    process.kill()  # kill -9 in the middle of the stream
                    return

        with pytest.raises(grpc.RpcError):
            stub.UploadBlob(slow(), timeout=60)
        stop.set()
        churn.join(30)
        process = start_storage(storage_env, tmp_path / "root")
        stub = process.stub()
        db = sqlite3.connect(process.root / "metadata.sqlite")
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()
        status = stub.GetUpload(storage_pb2.GetUploadRequest(tenant="lab-c", upload_id=upload_id))
        assert 0 < status.received <= 11 * MIB and status.received % MIB == 0
        blob = stub.UploadBlob(requests("lab-c", data, upload_id, start_at=status.received))
        assert blob.sha256 == hashlib.sha256(data).hexdigest()
        versions = stub.ListModelVersions(
            storage_pb2.ListModelVersionsRequest(tenant="lab-c", model="m")
        )
        numbers = [v.version for v in versions.versions]
        assert numbers == list(range(1, len(numbers) + 1)) and set(made) <= set(numbers)
        assert all(dict(v.files) == files for v in versions.versions)  # none torn
        live = stub.GetModelVersion(
            storage_pb2.GetModelVersionRequest(tenant="lab-c", model="m", alias="live")
        )
        assert live.version in numbers
        blob_dir = process.root / "blobs" / tenant_directory("lab-c")
        on_disk = {p.name for p in blob_dir.glob("*/*")}
        assert on_disk == {*files.values(), blob.sha256}  # no orphan or partial blob file
    finally:
        process.stop()


def test_a_blob_larger_than_1_gib_streams_through_in_bounded_memory(
    storage: StorageProcess,
) -> None:
    stub = storage.stub()
    size = (1 << 30) + 3 * MIB + 17
    block = os.urandom(MIB)
    digest = hashlib.sha256()

    def generated() -> Iterator[storage_pb2.UploadBlobRequest]:
        yield storage_pb2.UploadBlobRequest(
            start=storage_pb2.UploadStart(tenant="lab-big", upload_id=uuid.uuid4().hex, size=size)
        )
        offset = 0
        while offset < size:
            piece = (offset.to_bytes(8, "big") + block)[: min(MIB, size - offset)]
            digest.update(piece)
            yield storage_pb2.UploadBlobRequest(data=piece, offset=offset)
            offset += len(piece)

    blob = stub.UploadBlob(generated(), timeout=600)
    assert blob.size == size and blob.sha256 == digest.hexdigest()
    check = hashlib.sha256()
    request = storage_pb2.DownloadBlobRequest(tenant="lab-big", sha256=blob.sha256)
    for chunk in stub.DownloadBlob(request, timeout=600):
        check.update(chunk.data)
    assert check.hexdigest() == blob.sha256
    peak = peak_resident_mb(storage.proc.pid)
    assert 0 < peak < 400  # the blob is 1 GiB; memory stays small
