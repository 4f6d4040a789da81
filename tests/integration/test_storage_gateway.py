"""The storage API through the gateway, as tenants use it with the `llmos` CLI: datasets
uploaded with progress and described, models registered from a folder and exported,
aliases moved; scopes enforced, tenants isolated, store-wide operations for system admins
only, and every write audited."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from llmos.v1 import admin_pb2, admin_pb2_grpc, storage_pb2, storage_pb2_grpc
from tests.conftest import ROOT
from tests.integration.conftest import gateway_env
from tests.integration.storage_client import StorageProcess, start_storage
from tools.devstack.gateway_process import GatewayProcess, bearer, start_gateway
from tools.devstack.infra import NatsServer, RedisServer


@pytest.fixture(scope="module")
def stack(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, StorageProcess]]:
    data = tmp_path_factory.mktemp("storage-gw")
    env = {**gateway_env(nats_server, own_redis), "LLMOS_DATA_DIR": str(data / "data")}
    storage = start_storage(env, data / "store")
    gateway = start_gateway(env, data / "data")
    try:
        yield gateway, storage
    finally:
        gateway.stop()
        storage.stop()


def credentials(gateway: GatewayProcess, tmp: Path, tenant: str, scopes: list[str]) -> Path:
    """A client of `tenant` with `scopes`, written as a credentials file for the CLI."""
    with grpc.insecure_channel(gateway.address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        system = bearer(gateway.admin_token())
        try:
            admin.CreateTenant(admin_pb2.CreateTenantRequest(name=tenant), metadata=system)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
        created = admin.CreateClient(
            admin_pb2.CreateClientRequest(tenant=tenant, name="cli", scopes=scopes),
            metadata=system,
        )
    path = tmp / f"{tenant}-{'-'.join(s.replace(':', '_') for s in scopes)}.json"
    issuer = json.loads(gateway.credentials_file.read_text())["issuer"]
    path.write_text(json.dumps({
        "client_id": created.client.client_id, "client_secret": created.client_secret,
        "issuer": issuer,
    }))  # fmt: skip
    return path


def llmos(gateway: GatewayProcess, creds: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmos.cli", "--gateway", gateway.address, "--insecure",
         "--credentials", str(creds), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_tenant_uploads_describes_and_deletes_a_dataset_with_the_cli(
    stack: tuple[GatewayProcess, StorageProcess], tmp_path: Path
) -> None:
    gateway, _ = stack
    creds = credentials(gateway, tmp_path, "lab-s", ["datasets"])
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"".join(b"sentence %d\n" % i for i in range(300_000)))  # ~3.6 MB
    uploaded = llmos(gateway, creds, "datasets", "upload", str(corpus), "corpus")
    assert uploaded.returncode == 0, uploaded.stderr
    assert "corpus.txt: 100% of" in uploaded.stderr  # the progress line
    dataset = json.loads(uploaded.stdout)
    assert dataset["records"] == "300000" and dataset["tenant"] == "lab-s"
    assert dataset["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    listed = llmos(gateway, creds, "datasets", "list")
    assert listed.stdout.splitlines()[1].split()[0] == "corpus" and listed.returncode == 0
    other = credentials(gateway, tmp_path, "lab-other", ["datasets"])
    theirs = llmos(gateway, other, "datasets", "describe", "corpus")
    assert theirs.returncode != 0 and "NOT_FOUND: dataset 'corpus' does not exist" in theirs.stderr
    deleted = llmos(gateway, creds, "datasets", "delete", "corpus")
    assert deleted.returncode == 0
    gone = llmos(gateway, creds, "datasets", "describe", "corpus")
    assert "NOT_FOUND" in gone.stderr


def test_models_are_registered_from_a_folder_aliased_and_exported(
    stack: tuple[GatewayProcess, StorageProcess], tmp_path: Path
) -> None:
    gateway, _ = stack
    creds = credentials(gateway, tmp_path, "lab-r", ["models:read", "models:write", "datasets"])
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "num_hidden_layers": 1,
        "vocab_size": 256, "intermediate_size": 64, "max_position_embeddings": 128,
    }))  # fmt: skip
    (folder / "model.safetensors").write_bytes(os.urandom(200_000))
    first = llmos(gateway, creds, "models", "register", str(folder), "tiny", "--quiet")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["version"] == "1"
    (folder / "model.safetensors").write_bytes(os.urandom(200_000))
    second = llmos(gateway, creds, "models", "register", str(folder), "tiny", "--parent", "tiny@1")
    assert json.loads(second.stdout)["lineage"] == {"parent": "tiny@1"}
    moved = llmos(gateway, creds, "models", "alias", "tiny", "production", "2")
    assert moved.returncode == 0 and json.loads(moved.stdout)["aliases"] == ["production"]
    exported = llmos(gateway, creds, "models", "export", "tiny:production", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "out" / name).read_bytes() == (folder / name).read_bytes()
    versions = llmos(gateway, creds, "models", "versions", "tiny")
    assert [line.split()[0] for line in versions.stdout.splitlines()[1:]] == ["tiny@1", "tiny@2"]


def test_scopes_and_system_only_operations_are_enforced(
    stack: tuple[GatewayProcess, StorageProcess], tmp_path: Path
) -> None:
    gateway, _ = stack
    reader = credentials(gateway, tmp_path, "lab-p", ["models:read"])
    refused = llmos(gateway, reader, "datasets", "list")
    assert "PERMISSION_DENIED" in refused.stderr and "datasets" in refused.stderr
    tenant_admin = credentials(gateway, tmp_path, "lab-p", ["admin"])
    backup = llmos(gateway, tenant_admin, "admin", "backup", str(tmp_path / "b"))
    assert "only admins of the 'system' tenant may back up storage" in backup.stderr
    system_creds = gateway.credentials_file
    done = llmos(gateway, system_creds, "admin", "backup", str(tmp_path / "backup"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "backup" / "manifest.json").is_file()
    rotated = llmos(gateway, system_creds, "admin", "rotate-key", "storage")
    assert rotated.returncode == 0 and "key_id" in rotated.stdout


def test_a_tenant_cannot_name_another_tenant_in_a_request(
    stack: tuple[GatewayProcess, StorageProcess], tmp_path: Path
) -> None:
    gateway, storage = stack
    internal = storage.stub()  # lab-s owns a dataset (made behind the gateway)
    blob = internal.UploadBlob(
        iter([
            storage_pb2.UploadBlobRequest(start=storage_pb2.UploadStart(
                tenant="lab-s", upload_id="secret-upload", size=6)),
            storage_pb2.UploadBlobRequest(data=b"secret", offset=0),
        ])
    )  # fmt: skip
    internal.CreateDataset(
        storage_pb2.CreateDatasetRequest(tenant="lab-s", name="private", sha256=blob.sha256)
    )
    creds = json.loads(credentials(gateway, tmp_path, "lab-i", ["datasets"]).read_text())
    token = gateway.issuer.client_credentials(creds["client_id"], creds["client_secret"])
    intruder = bearer(str(token["access_token"]))
    with grpc.insecure_channel(gateway.address) as channel:
        stub = storage_pb2_grpc.StorageStub(channel)
        listed = stub.ListDatasets(
            storage_pb2.ListDatasetsRequest(tenant="lab-s"), metadata=intruder
        )
        assert list(listed.datasets) == []  # the named tenant was replaced by the caller's
        for call in (
            lambda: stub.GetDataset(
                storage_pb2.GetDatasetRequest(tenant="lab-s", name="private"), metadata=intruder
            ),
            lambda: list(stub.DownloadBlob(
                storage_pb2.DownloadBlobRequest(tenant="lab-s", sha256=blob.sha256),
                metadata=intruder,
            )),
        ):  # fmt: skip
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
