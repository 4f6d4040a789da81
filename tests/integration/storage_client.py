"""A storage process for tests and the client-side pieces its tests share: the messages
of an upload, a download, a refusal with its code and sentence, a model's files."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from llmos.v1 import storage_pb2, storage_pb2_grpc
from tools.harness import Process, start_service

MIB = 1 << 20


@dataclass
class StorageProcess:
    """A storage service process and the directory it keeps its data in."""

    process: Process
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return self.process.env

    def stub(self) -> storage_pb2_grpc.StorageStub:
        return storage_pb2_grpc.StorageStub(self.process.channel())

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()


def start_storage(env: dict[str, str], root: Path) -> StorageProcess:
    """A storage service keeping its data under `root`, once SERVING."""
    process = start_service(
        "services.storage", {**env, "LLMOS_STORAGE_DIR": str(root)}, root.parent
    )
    return StorageProcess(process, root)


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
