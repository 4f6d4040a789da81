"""Encrypted, content-addressed blob files: chunked writes that can resume, verified reads.

A blob is named by the SHA-256 of its plaintext within its tenant (the same content
uploaded twice by one tenant is stored once). Uploads are written chunk by chunk to a
file of their own (never held whole in memory); what a broken upload already wrote stays
and the client resumes from `received`. On completion the digest is checked, the file is
fsynced and renamed into place, and only then is the blob's row committed — so a crash
leaves either no blob or a whole one. Reads decrypt and authenticate chunk by chunk (a
flipped byte, a truncated or reordered file is `Corrupt`) and re-check the digest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from services.storage.crypto import CHUNK, TAG, Corrupt, DataKey, KeyEncryptionKeys, chunk_count
from services.storage.metadata import Metadata, UploadRow

SEALED = CHUNK + TAG


def tenant_directory(tenant: str) -> str:
    """A tenant's folder name: a digest, so no tenant name can shape a path."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:24]


@dataclass
class Upload:
    """An upload in progress in this process."""

    row: UploadRow
    key: DataKey
    path: Path
    received: int
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    pending: bytearray = field(default_factory=bytearray)
    file: BinaryIO | None = None  # open for appending while the upload streams

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    @property
    def next_chunk(self) -> int:
        return self.received // CHUNK


class BlobFiles:
    """The blob and upload files under one root, with their keys in `Metadata`."""

    def __init__(self, root: Path, metadata: Metadata, keys: KeyEncryptionKeys) -> None:
        self.root = root
        self.metadata = metadata
        self.keys = keys
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "uploads").mkdir(parents=True, exist_ok=True)

    def blob_path(self, tenant: str, sha256: str) -> Path:
        return self.root / "blobs" / tenant_directory(tenant) / sha256[:2] / sha256

    def upload_path(self, tenant: str, upload_id: str) -> Path:
        return self.root / "uploads" / tenant_directory(tenant) / upload_id

    # -- writing -------------------------------------------------------------------------

    def begin(self, tenant: str, upload_id: str, size: int, expected_sha256: str) -> Upload:
        """A new upload, or the one with this id resumed where its file ends."""
        row = self.metadata.upload(tenant, upload_id)
        path = self.upload_path(tenant, upload_id)
        if row is None:
            key = DataKey.generate()
            kek_id, wrapped = self.keys.wrap(key)
            row = UploadRow(tenant, upload_id, size, expected_sha256, 0, kek_id, wrapped)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            self.metadata.begin_upload(row)
            return Upload(row, key, path, 0)
        upload = Upload(row, self.keys.unwrap(row.kek_id, row.wrapped_key), path, 0)
        self._recover(upload)
        return upload

    def _recover(self, upload: Upload) -> None:
        """Re-read what a broken upload wrote: whole chunks that authenticate count (and
        feed the digest); a torn tail is cut off."""
        whole = (upload.path.stat().st_size if upload.path.exists() else 0) // SEALED
        good = 0
        with upload.path.open("a+b") as file:
            file.seek(0)
            for index in range(whole):
                try:
                    chunk = upload.key.open(index, file.read(SEALED), last=False)
                except Corrupt:
                    break
                upload.digest.update(chunk)
                good += 1
            file.truncate(good * SEALED)
        upload.received = good * CHUNK

    def write(self, upload: Upload, data: bytes) -> None:
        """Append plaintext; whole chunks are sealed and written at once."""
        if upload.received + len(upload.pending) + len(data) > upload.row.size:
            raise ValueError(f"more data than the {upload.row.size} bytes announced")
        upload.pending += data
        last_index = chunk_count(upload.row.size) - 1
        if upload.file is None:
            upload.file = upload.path.open("ab")
        while len(upload.pending) >= CHUNK and upload.next_chunk < last_index:
            chunk = bytes(upload.pending[:CHUNK])
            del upload.pending[:CHUNK]
            upload.file.write(upload.key.seal(upload.next_chunk, chunk, last=False))
            upload.digest.update(chunk)
            upload.received += CHUNK

    def complete(self, upload: Upload) -> bool:
        """Whether everything announced has arrived."""
        return upload.received + len(upload.pending) == upload.row.size

    def finish(self, upload: Upload) -> tuple[str, bool]:
        """Seal the last chunk, check the digest, move the file into place, commit the
        row. Returns (sha256, deduplicated). The caller checked `complete`."""
        last = bytes(upload.pending)
        upload.pending.clear()
        upload.digest.update(last)
        sha256 = upload.digest.hexdigest()
        row = upload.row
        if row.expected_sha256 and row.expected_sha256 != sha256:
            self.discard(row.tenant, row.upload_id)
            raise DigestMismatch(row.expected_sha256, sha256)
        upload.close()
        with upload.path.open("ab") as file:
            file.write(upload.key.seal(chunk_count(row.size) - 1, last, last=True))
            file.flush()
            os.fsync(file.fileno())
        upload.received = row.size
        target = self.blob_path(row.tenant, sha256)
        if self.metadata.blob(row.tenant, sha256) is not None:
            self.discard(row.tenant, row.upload_id)
            return sha256, True
        target.parent.mkdir(parents=True, exist_ok=True)
        upload.path.replace(target)
        _fsync_directory(target.parent)
        deduplicated = self.metadata.commit_upload(row, sha256)
        return sha256, deduplicated

    def discard(self, tenant: str, upload_id: str) -> None:
        self.metadata.drop_upload(tenant, upload_id)
        self.upload_path(tenant, upload_id).unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------------------

    def read(self, tenant: str, sha256: str, offset: int = 0, group: int = 1) -> Iterator[bytes]:
        """Plaintext from `offset`, `group` chunks at a time, each authenticated before it
        is given out; from offset 0 the digest is re-checked at the end."""
        row = self.metadata.blob(tenant, sha256)
        if row is None:
            raise FileNotFoundError(sha256)
        key = self.keys.unwrap(row.kek_id, row.wrapped_key)
        count = chunk_count(row.size)
        path = self.blob_path(tenant, sha256)
        if not path.exists():
            raise Corrupt(f"the file of blob {sha256} is missing")
        if path.stat().st_size != row.size + count * TAG:
            raise Corrupt(f"the file of blob {sha256} has the wrong length")
        digest = hashlib.sha256() if offset == 0 else None
        first = offset // CHUNK
        batch: list[bytes] = []
        with path.open("rb") as file:
            file.seek(first * SEALED)
            for index in range(first, count):
                chunk = key.open(index, file.read(SEALED), last=index == count - 1)
                if digest is not None:
                    digest.update(chunk)
                batch.append(chunk[offset - index * CHUNK :] if index == first else chunk)
                if len(batch) == group:
                    yield b"".join(batch)
                    batch.clear()
        if batch:
            yield b"".join(batch)
        if digest is not None and digest.hexdigest() != sha256:
            raise Corrupt(f"blob {sha256} does not hash to its name")

    def remove(self, tenant: str, sha256: str) -> None:
        """Delete a blob nothing references any more: row first, then the file."""
        self.metadata.delete_blob(tenant, sha256)
        self.blob_path(tenant, sha256).unlink(missing_ok=True)

    def sweep(self) -> int:
        """At start: delete blob files no row names and uploads without a file."""
        known = {self.blob_path(b.tenant, b.sha256) for b in self.metadata.blobs()}
        removed = 0
        for path in (self.root / "blobs").glob("*/*/*"):
            if path.is_file() and path not in known:
                path.unlink()
                removed += 1
        for upload in self.metadata.uploads():
            if not self.upload_path(upload.tenant, upload.upload_id).exists():
                self.metadata.drop_upload(upload.tenant, upload.upload_id)
        return removed


class DigestMismatch(ValueError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"the data hashes to {actual}, not the {expected} announced")


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
