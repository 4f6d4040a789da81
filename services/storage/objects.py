"""Blobs as objects in an S3-compatible store (SeaweedFS in tests; AWS S3, MinIO, Ceph...).

The store sees only sealed bytes (services.storage.blobs encrypts before, and the keys stay
with the storage service), under the same names as on a local disk (`blobs/<tenant
digest>/<xx>/<sha256>`). An upload is an S3 multipart upload of its own object
`uploads/<tenant digest>/<upload id>`, each part `PART_CHUNKS` whole sealed chunks: parts
are what the store keeps of a broken stream, so a resumed upload lists them and goes on
after the last whole run of them. A finished upload is completed, then copied server-side
to its blob's name. At most one part per upload is held in memory.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from services.storage.places import (
    SEALED,
    BlobPlace,
    Staging,
    blob_name,
    upload_name,
)

#: sealed chunks per part: over S3's 5 MiB minimum for every part but the last, and 10,000
#: parts (S3's maximum) of it hold an 80 GiB blob
PART_CHUNKS = 8
PART = PART_CHUNKS * SEALED


@dataclass(frozen=True)
class ObjectStoreConfig:
    """How to reach the bucket; the secret key is never shown."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    ca_file: str = ""


def s3_client(config: ObjectStoreConfig) -> Any:
    """A boto3 S3 client (thread-safe) for an S3-compatible endpoint: path-style names
    (most self-hosted stores have no wildcard DNS), retries, and no extra checksums (every
    chunk is authenticated already)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=config.endpoint,
        aws_access_key_id=config.access_key,
        aws_secret_access_key=config.secret_key,
        region_name=config.region,
        verify=config.ca_file or None,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=120,
            max_pool_connections=32,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


class _Parts:
    """A multipart upload being written, a part at a time."""

    def __init__(self, client: Any, bucket: str, key: str, upload_id: str) -> None:
        self._client, self._bucket, self.key, self.upload_id = client, bucket, key, upload_id
        self.done: list[dict[str, Any]] = []
        self._buffer = bytearray()

    def add(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= PART:
            self._send(bytes(self._buffer[:PART]))
            del self._buffer[:PART]

    def _send(self, body: bytes) -> None:
        number = len(self.done) + 1
        answer = self._client.upload_part(
            Bucket=self._bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number,
            Body=body,
        )  # fmt: skip
        self.done.append({"PartNumber": number, "ETag": answer["ETag"]})

    def complete(self) -> None:
        if self._buffer or not self.done:
            self._send(bytes(self._buffer))
            self._buffer.clear()
        self._client.complete_multipart_upload(
            Bucket=self._bucket, Key=self.key, UploadId=self.upload_id,
            MultipartUpload={"Parts": self.done},
        )  # fmt: skip


class ObjectStaging(Staging):
    def __init__(self, store: ObjectStore, key: str, keep: int) -> None:
        self._store = store
        self._key = key
        found = store.multipart(key) if keep else None
        self.chunks = 0
        if found is None:
            store.abort(key)
            upload_id = store.client.create_multipart_upload(Bucket=store.bucket, Key=key)[
                "UploadId"
            ]
            self._parts = _Parts(store.client, store.bucket, key, upload_id)
            return
        self._parts = _Parts(store.client, store.bucket, key, found)
        for part in store.parts(key, found):
            if part["PartNumber"] != len(self._parts.done) + 1 or part["Size"] != PART:
                break
            if (len(self._parts.done) + 1) * PART_CHUNKS > keep:
                break
            self._parts.done.append({"PartNumber": part["PartNumber"], "ETag": part["ETag"]})
        self.chunks = len(self._parts.done) * PART_CHUNKS

    def append(self, sealed: bytes) -> None:
        self._parts.add(sealed)
        self.chunks = len(self._parts.done) * PART_CHUNKS

    def finalise(self) -> None:
        self._parts.complete()

    def read(self) -> Iterator[bytes]:
        return self._store.read_object(self._key, 0)

    def publish(self, tenant: str, sha256: str) -> None:
        store = self._store
        store.client.copy(
            {"Bucket": store.bucket, "Key": self._key},
            store.bucket,
            store.key(blob_name(tenant, sha256)),
        )
        store.client.delete_object(Bucket=store.bucket, Key=self._key)

    def close(self) -> None:
        """Nothing is held open; parts not yet sent are dropped (a resume lists the rest)."""


class ObjectStore(BlobPlace):
    """Blobs and uploads in one bucket, under an optional key prefix."""

    def __init__(self, config: ObjectStoreConfig, prefix: str = "") -> None:
        self.client = s3_client(config)
        self.bucket = config.bucket
        self.prefix = prefix
        self.where = f"{config.endpoint.rstrip('/')}/{config.bucket}/{prefix}"

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def key(self, name: str) -> str:
        return self.prefix + name

    # -- uploads --------------------------------------------------------------------------

    def _uploads(self, key: str) -> list[dict[str, Any]]:
        """The multipart uploads open on exactly `key`."""
        answer = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        return [u for u in answer.get("Uploads", []) if u["Key"] == key]

    def multipart(self, key: str) -> str | None:
        """The id of the newest multipart upload of `key`, if one is open."""
        newest = _newest(self._uploads(key))
        return str(newest["UploadId"]) if newest else None

    def parts(self, key: str, upload_id: str) -> list[dict[str, Any]]:
        pages = self.client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=key, UploadId=upload_id
        )
        found = [part for page in pages for part in page.get("Parts", [])]
        return sorted(found, key=lambda p: int(p["PartNumber"]))

    def abort(self, key: str) -> None:
        """Abort every multipart upload of `key` and delete the object."""
        for upload in self._uploads(key):
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
            )
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def stage(self, tenant: str, upload_id: str, keep: int) -> Staging:
        return ObjectStaging(self, self.key(upload_name(tenant, upload_id)), keep)

    def has_staging(self, tenant: str, upload_id: str) -> bool:
        return self.multipart(self.key(upload_name(tenant, upload_id))) is not None

    def last_write(self, tenant: str, upload_id: str) -> float:
        key = self.key(upload_name(tenant, upload_id))
        uploads = self._uploads(key)
        newest = _newest(uploads)
        if newest is None:
            return 0.0
        parts = self.parts(key, str(newest["UploadId"]))
        times = [p["LastModified"] for p in parts if p.get("LastModified")]
        times += [u["Initiated"] for u in uploads if u.get("Initiated")]
        return max(t.timestamp() for t in times) if times else 0.0

    def discard(self, tenant: str, upload_id: str) -> None:
        self.abort(self.key(upload_name(tenant, upload_id)))

    # -- blobs ----------------------------------------------------------------------------

    def size(self, tenant: str, sha256: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.head_object(
                Bucket=self.bucket, Key=self.key(blob_name(tenant, sha256))
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(answer["ContentLength"])

    def read(self, tenant: str, sha256: str, first_chunk: int) -> Iterator[bytes]:
        return self.read_object(self.key(blob_name(tenant, sha256)), first_chunk)

    def read_object(self, key: str, first_chunk: int) -> Iterator[bytes]:
        """An object's sealed chunks from `first_chunk` on, streamed."""
        extra = {"Range": f"bytes={first_chunk * SEALED}-"} if first_chunk else {}
        body = self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
        try:
            while True:
                piece = body.read(SEALED)
                while piece and len(piece) < SEALED:
                    more = body.read(SEALED - len(piece))
                    if not more:
                        break
                    piece += more
                if not piece:
                    return
                yield piece
        finally:
            body.close()

    def write(self, tenant: str, sha256: str, sealed: Iterable[bytes]) -> None:
        key = self.key(blob_name(tenant, sha256))
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        parts = _Parts(self.client, self.bucket, key, upload_id)
        for piece in sealed:
            parts.add(piece)
        parts.complete()

    def remove(self, tenant: str, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(blob_name(tenant, sha256)))

    def sweep(self, known: set[tuple[str, str]]) -> int:
        keys = {self.key(blob_name(tenant, sha256)) for tenant, sha256 in known}
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.key("blobs/")
        )
        removed = 0
        for page in pages:
            for item in page.get("Contents", []):
                if item["Key"] not in keys:
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    removed += 1
        return removed


def _newest(uploads: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The multipart upload begun last, if any."""
    if not uploads:
        return None
    return max(uploads, key=lambda u: u.get("Initiated") or datetime.datetime.min)
