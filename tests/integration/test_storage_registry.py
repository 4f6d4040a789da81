"""Storage's datasets and model registry as their callers see them: described, listed,
isolated per tenant and really deleted; versions numbered, aliases moved, lineage kept,
bad versions refused; and kill -9 mid-upload and mid-registry-change leaves the old state
or the new, never a torn one. A real storage process on real NATS and Redis, each test on
both backends (files and SQLite; SeaweedFS's S3 and PostgreSQL)."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.struct_pb2 import Struct

from llmos.errors import NotFound
from llmos.links import Links
from llmos.modelstore import ModelStore
from llmos.registry import ServiceRegistry
from llmos.v1 import scheduler_pb2, storage_pb2
from services.trainer.artifacts import Inputs, fetch_inputs
from tests.integration.storage_client import (
    MIB,
    Backend,
    StorageProcess,
    download,
    model_files,
    refused,
    requests,
    start_storage,
    upload,
)
from tools.devstack.infra import RedisServer
from tools.standin import identity_for


@pytest.fixture(scope="module")
def storage(storage_on_each_backend: StorageProcess) -> StorageProcess:
    """Each test runs on both backends."""
    return storage_on_each_backend


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
    assert blob.sha256 not in storage.blobs("lab-d")  # really deleted


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
        (
            {"config": b'{"model_type": "llama", "max_position_embeddings": 17179869184}'},
            grpc.StatusCode.INVALID_ARGUMENT,
            "config.max_position_embeddings: is 17179869184; at most 1048576 is accepted",
        ),
        (
            {"config": b'{"model_type": "llama", "notes": "' + b"x" * (2 << 20) + b'"}'},
            grpc.StatusCode.INVALID_ARGUMENT,
            "files[config.json]: is 2097188 bytes or more; a config.json may be at most "
            "1048576 bytes",
        ),
    ],
    ids=[
        "traversal",
        "file traversal",
        "unknown blob",
        "no files",
        "oversized metadata",
        "absurd context length",
        "oversized config",
    ],
)
def test_bad_model_versions_are_refused(
    storage: StorageProcess, change: dict[str, object], code: grpc.StatusCode, sentence: str
) -> None:
    stub = storage.stub()
    request = storage_pb2.CreateModelVersionRequest(tenant="lab-x", model="good")
    config = change.get("config", b"{}")
    assert isinstance(config, bytes)
    files = change.get("files", {"config.json": upload(stub, "lab-x", config).sha256})
    assert isinstance(files, dict)
    request.files.update(files)
    if "model" in change:
        request.model = str(change["model"])
    if "metadata" in change:
        request.metadata.update(change["metadata"])  # type: ignore[arg-type]
    refused(lambda: stub.CreateModelVersion(request), code, sentence)
    assert not stub.ListModelVersions(storage_pb2.ListModelVersionsRequest(tenant="lab-x")).versions


def test_kill_9_mid_upload_and_mid_registry_change_leaves_old_or_new_state(
    storage_env: dict[str, str], tmp_path: Path, backend: Backend
) -> None:
    process = start_storage(storage_env, tmp_path / "root", backend)
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
                if message.offset >= 18 * MIB:  # over 2 whole parts of an object store
                    process.kill()  # kill -9 in the middle of the stream
                    return

        with pytest.raises(grpc.RpcError):
            stub.UploadBlob(slow(), timeout=60)
        stop.set()
        churn.join(30)
        process = start_storage(storage_env, tmp_path / "root", backend)
        stub = process.stub()
        assert backend.intact(process.root)
        status = stub.GetUpload(storage_pb2.GetUploadRequest(tenant="lab-c", upload_id=upload_id))
        assert 0 < status.received <= 19 * MIB and status.received % backend.granule == 0
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
        stored = process.blobs("lab-c")
        assert stored == {*files.values(), blob.sha256}  # no orphan or partial blob
    finally:
        process.stop()


async def test_a_trainer_fetches_each_tenants_base_model_and_never_anothers(
    storage: StorageProcess, own_redis: RedisServer, tmp_path: Path
) -> None:
    """Two tenants' private models of one name are two models: a fine-tune of each starts
    from its own tenant's weights, in a cache folder of its own, and a tenant without such
    a model is told there is none."""
    stub = storage.stub()
    weights = {}
    for tenant, seed in (("lab-a", 1), ("lab-b", 2)):
        files = model_files(stub, tenant, seed)  # complete: a cached copy would be used
        for name in ("tokenizer.json", "tokenizer_config.json"):
            files[name] = upload(stub, tenant, b"{}").sha256
        weights[tenant] = download(stub, tenant, files["model.safetensors"])
        stub.CreateModelVersion(
            storage_pb2.CreateModelVersionRequest(tenant=tenant, model="same-name", files=files)
        )
    registry = ServiceRegistry(aioredis.Redis.from_url(own_redis.url), ttl_s=5)
    links = Links(registry, identity_for(own_redis.secrets_dir, "trainer"))
    models = tmp_path / "models"

    async def fetch(tenant: str) -> Inputs:
        config = Struct()
        config.update({"base_model": "same-name"})
        job = scheduler_pb2.Job(tenant=tenant, spec=scheduler_pb2.JobSpec(config=config))
        return await fetch_inputs(job, ModelStore(links, tenant), tmp_path, models)

    folders = {tenant: Path((await fetch(tenant)).base_model_dir) for tenant in weights}
    assert folders["lab-a"] != folders["lab-b"]
    for tenant, folder in folders.items():
        assert (folder / "model.safetensors").read_bytes() == weights[tenant]
        assert models in folder.parents
    with pytest.raises(NotFound, match=r"^model 'same-name' is not in the registry$"):
        await fetch("lab-c")
