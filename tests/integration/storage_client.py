"""A storage process for tests, on either backend, and the client-side pieces its tests
share: the messages of an upload, a download, a refusal with its code and sentence, a
model's files.

A `Backend` is where a storage process keeps its data and how a test looks underneath
the API (the sealed bytes of a blob, the metadata rows): `LOCAL` (files and SQLite under
the process's root, the embedded default) or `Shared` (a database of its own on a real
PostgreSQL server and a bucket of its own on a real S3-compatible store, SeaweedFS).
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmos.v1 import storage_pb2, storage_pb2_grpc
from services.storage.crypto import CHUNK
from services.storage.objects import PART_CHUNKS
from services.storage.places import blob_name, tenant_directory, upload_name
from tools.devstack.shared_storage import (
    ObjectStoreServer,
    PostgresServer,
    start_object_store,
    start_postgres,
)
from tools.harness import Process, start_service

MIB = 1 << 20
#: the variables that put a storage process on shared backends
SHARED_BACKEND_VARIABLES = ("LLMOS_STORAGE_DATABASE_URL", "LLMOS_STORAGE_S3_")


class Backend:
    """Where storage processes keep their data, as a test sees it."""

    name = "local"
    #: what a broken upload keeps: whole chunks
    granule = CHUNK

    def env(self, root: Path) -> dict[str, str]:
        """What a storage process keeping its data for `root` is configured with."""
        return {}

    def sealed(self, root: Path, tenant: str, sha256: str) -> bytes:
        """A blob's stored (encrypted) bytes."""
        return (root / blob_name(tenant, sha256)).read_bytes()

    def replace(self, root: Path, tenant: str, sha256: str, sealed: bytes) -> None:
        (root / blob_name(tenant, sha256)).write_bytes(sealed)

    def staged(self, root: Path, tenant: str) -> int:
        """How many uploads of `tenant` have data staged."""
        folder = root / "uploads" / tenant_directory(tenant)
        return len(list(folder.iterdir())) if folder.exists() else 0

    def rows(self, root: Path, sql: str) -> list[tuple[Any, ...]]:
        """The answer to `sql` from the metadata database."""
        db = sqlite3.connect(root / "metadata.sqlite")
        try:
            return [tuple(r) for r in db.execute(sql).fetchall()]
        finally:
            db.close()

    def intact(self, root: Path) -> bool:
        """Whether the metadata database passes its own integrity check."""
        return self.rows(root, "PRAGMA integrity_check") == [("ok",)]

    def blobs(self, root: Path, tenant: str) -> set[str]:
        """The digests of the blobs stored for `tenant`, whole or not."""
        return {p.name for p in (root / "blobs" / tenant_directory(tenant)).glob("*/*")}


LOCAL = Backend()


class Shared(Backend):
    """PostgreSQL and an S3-compatible store: each storage root gets a database and a
    bucket of its own on the same two servers."""

    name = "s3+postgresql"
    #: what a broken upload keeps: whole multipart parts
    granule = PART_CHUNKS * CHUNK

    def __init__(self, postgres: PostgresServer, objects: ObjectStoreServer, keys: Path) -> None:
        self.postgres = postgres
        self.objects = objects
        self._keys = keys

    @staticmethod
    def _id(root: Path) -> str:
        return hashlib.sha256(str(root).encode()).hexdigest()[:16]

    def env(self, root: Path) -> dict[str, str]:
        import psycopg

        name = f"storage_{self._id(root)}"
        with psycopg.connect(self.postgres.admin_url(), autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                conn.execute(f"CREATE DATABASE {name} OWNER storage")
        return {
            "LLMOS_STORAGE_DATABASE_URL": (
                f"postgresql://{self.postgres.host}:{self.postgres.port}/{name}"
            ),
            "LLMOS_STORAGE_S3_ENDPOINT": self.objects.endpoint,
            "LLMOS_STORAGE_S3_BUCKET": f"storage-{self._id(root)}",
        }

    def _client(self) -> Any:
        from llmos.trust import read_credentials
        from services.storage.objects import ObjectStoreConfig, s3_client

        keys = read_credentials(self._keys / "s3" / "storage.json")
        return s3_client(
            ObjectStoreConfig(self.objects.endpoint, "", keys.user, keys.password.reveal())
        )

    def sealed(self, root: Path, tenant: str, sha256: str) -> bytes:
        answer = self._client().get_object(
            Bucket=f"storage-{self._id(root)}", Key=blob_name(tenant, sha256)
        )
        data: bytes = answer["Body"].read()
        return data

    def replace(self, root: Path, tenant: str, sha256: str, sealed: bytes) -> None:
        self._client().put_object(
            Bucket=f"storage-{self._id(root)}", Key=blob_name(tenant, sha256), Body=sealed
        )

    def staged(self, root: Path, tenant: str) -> int:
        prefix = upload_name(tenant, "")
        answer = self._client().list_multipart_uploads(
            Bucket=f"storage-{self._id(root)}", Prefix=prefix
        )
        return len(answer.get("Uploads", []))

    def rows(self, root: Path, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        url = self.postgres.admin_url(f"storage_{self._id(root)}")
        with psycopg.connect(url) as conn:
            return [tuple(r) for r in conn.execute(sql).fetchall()]

    def intact(self, root: Path) -> bool:
        """PostgreSQL keeps its own integrity (WAL); the tables answer."""
        return bool(self.rows(root, "SELECT COUNT(*) FROM blobs"))

    def blobs(self, root: Path, tenant: str) -> set[str]:
        pages = (
            self._client()
            .get_paginator("list_objects_v2")
            .paginate(
                Bucket=f"storage-{self._id(root)}", Prefix=f"blobs/{tenant_directory(tenant)}/"
            )
        )
        return {item["Key"].rsplit("/", 1)[1] for p in pages for item in p.get("Contents", [])}


@contextlib.contextmanager
def shared_backend(directory: Path, secrets_dir: Path) -> Iterator[Shared]:
    """A PostgreSQL server and a SeaweedFS, stopped on exit."""
    postgres = start_postgres(directory / "postgres", secrets_dir)
    try:
        objects = start_object_store(directory / "objects", secrets_dir)
        try:
            yield Shared(postgres, objects, secrets_dir)
        finally:
            objects.stop()
    finally:
        postgres.stop()


@dataclass
class StorageProcess:
    """A storage service process and where it keeps its data."""

    process: Process
    root: Path
    backend: Backend = LOCAL

    def sealed(self, tenant: str, sha256: str) -> bytes:
        return self.backend.sealed(self.root, tenant, sha256)

    def replace(self, tenant: str, sha256: str, sealed: bytes) -> None:
        self.backend.replace(self.root, tenant, sha256, sealed)

    def staged(self, tenant: str) -> int:
        return self.backend.staged(self.root, tenant)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.backend.rows(self.root, sql)

    def blobs(self, tenant: str) -> set[str]:
        return self.backend.blobs(self.root, tenant)

    @property
    def env(self) -> dict[str, str]:
        return self.process.env

    def stub(self) -> storage_pb2_grpc.StorageStub:
        return storage_pb2_grpc.StorageStub(self.process.channel())

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        self.process.stop()


def start_storage(env: dict[str, str], root: Path, backend: Backend = LOCAL) -> StorageProcess:
    """A storage service keeping its data under `root` (keys, and with `LOCAL` the rest;
    its own database and bucket on a `Shared` one), once SERVING."""
    env = {k: v for k, v in env.items() if not k.startswith(SHARED_BACKEND_VARIABLES)}
    env = {**env, "LLMOS_STORAGE_DIR": str(root), **backend.env(root)}
    process = start_service("services.storage", env, root.parent)
    return StorageProcess(process, root, backend)


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
