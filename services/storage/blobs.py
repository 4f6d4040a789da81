"""Encrypted, content-addressed blobs: chunked writes that can resume, verified reads.

A blob is named by the SHA-256 of its plaintext within its tenant (the same content
uploaded twice by one tenant is stored once). Uploads are sealed and staged chunk by
chunk in the blob place (services.storage.places: a local disk or an object store; never
held whole in memory); what a broken upload already staged stays and the client resumes
from `received`. On completion the digest is checked, the staging made durable and put
into place, and only then is the blob's row committed — so a crash leaves either no blob
or a whole one. Reads open and authenticate chunk by chunk (a flipped byte, a truncated
or reordered blob is `Corrupt`) and re-check the digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

from llmos.errors import DataLoss
from services.storage.crypto import CHUNK, TAG, Corrupt, DataKey, KeyEncryptionKeys, chunk_count
from services.storage.metadata import Metadata, UploadRow
from services.storage.places import SEALED, BlobPlace, Staging, tenant_directory

__all__ = ["SEALED", "BlobFiles", "DigestMismatch", "Upload", "tenant_directory"]


@dataclass
class Upload:
    """An upload in progress in this process."""

    row: UploadRow
    key: DataKey
    staging: Staging
    received: int
    #: the digest of what was received, or None for an upload resumed from staging another
    #: process wrote: its digest is computed from the staging when it is finished
    digest: hashlib._Hash | None = field(default_factory=hashlib.sha256)
    pending: bytearray = field(default_factory=bytearray)

    def close(self) -> None:
        self.staging.close()

    @property
    def next_chunk(self) -> int:
        return self.received // CHUNK

    @property
    def stored(self) -> int:
        """Bytes kept where a resumed upload finds them (at most `received`)."""
        return min(self.staging.chunks * CHUNK, self.received)


class BlobFiles:
    """The sealed blobs and uploads in one place, with their keys in `Metadata`."""

    def __init__(self, place: BlobPlace, metadata: Metadata, keys: KeyEncryptionKeys) -> None:
        self.place = place
        self.metadata = metadata
        self.keys = keys

    # -- writing -------------------------------------------------------------------------

    def begin(self, tenant: str, upload_id: str, size: int, expected_sha256: str) -> Upload:
        """A new upload, or the one with this id resumed after its last whole chunk."""
        row = self.metadata.upload(tenant, upload_id)
        if row is None:
            key = DataKey.generate()
            kek_id, wrapped = self.keys.wrap(key)
            row = UploadRow(tenant, upload_id, size, expected_sha256, 0, kek_id, wrapped)
            staging = self.place.stage(tenant, upload_id, keep=0)
            self.metadata.begin_upload(row)
            return Upload(row, key, staging, 0)
        # never the last chunk: it is sealed as the last, and only at the finish
        staging = self.place.stage(tenant, upload_id, keep=chunk_count(row.size) - 1)
        key = self.keys.unwrap(row.kek_id, row.wrapped_key)
        whole = staging.chunks
        return Upload(row, key, staging, whole * CHUNK, digest=None if whole else hashlib.sha256())

    def write(self, upload: Upload, data: bytes) -> None:
        """Append plaintext; whole chunks are sealed and staged at once. The data is cut
        into chunks without copying it (only a chunk split across messages is gathered),
        and hashed on another thread while it is sealed on this one."""
        if upload.received + len(upload.pending) + len(data) > upload.row.size:
            raise ValueError(f"more data than the {upload.row.size} bytes announced")
        last_index = chunk_count(upload.row.size) - 1
        rest = memoryview(data)
        chunks: list[bytearray | memoryview] = []
        if upload.pending:  # complete the chunk begun by earlier messages first
            taken = min(CHUNK - len(upload.pending), len(rest))
            upload.pending += rest[:taken]
            rest = rest[taken:]
            if len(upload.pending) < CHUNK or upload.next_chunk >= last_index:
                upload.pending += rest  # (nothing is left if the chunk is not whole)
                return
            chunks.append(upload.pending)
            upload.pending = bytearray()
        while len(rest) >= CHUNK and upload.next_chunk + len(chunks) < last_index:
            chunks.append(rest[:CHUNK])
            rest = rest[CHUNK:]
        upload.pending += rest
        if not chunks:
            return
        hashed = None
        if upload.digest is not None:
            hashed = _HASHING.submit(_update, upload.digest, chunks)
        try:
            for chunk in chunks:
                plain = cast(bytes, chunk)  # a buffer: AES-GCM reads it in place
                sealed = upload.key.seal(upload.next_chunk, plain, last=False)
                upload.staging.append(sealed)
                upload.received += CHUNK
        finally:
            if hashed is not None:
                hashed.result()

    def complete(self, upload: Upload) -> bool:
        """Whether everything announced has arrived."""
        return upload.received + len(upload.pending) == upload.row.size

    def finish(self, upload: Upload) -> tuple[str, bool]:
        """Seal the last chunk, check the digest, put the blob in place, commit the row.
        Returns (sha256, deduplicated). The caller checked `complete`."""
        last = bytes(upload.pending)
        upload.pending.clear()
        row = upload.row
        upload.staging.append(upload.key.seal(chunk_count(row.size) - 1, last, last=True))
        upload.staging.finalise()
        upload.received = row.size
        if upload.digest is not None:
            upload.digest.update(last)
            sha256 = upload.digest.hexdigest()
        else:
            sha256 = self._staged_digest(upload)
        if row.expected_sha256 and row.expected_sha256 != sha256:
            self.discard(row.tenant, row.upload_id)
            raise DigestMismatch(row.expected_sha256, sha256)
        if self.metadata.blob(row.tenant, sha256) is not None:
            self.discard(row.tenant, row.upload_id)
            return sha256, True
        upload.staging.publish(row.tenant, sha256)
        deduplicated = self.metadata.commit_upload(row, sha256)
        return sha256, deduplicated

    def _staged_digest(self, upload: Upload) -> str:
        """The digest of a resumed upload, read back from its finalised staging; staging
        that does not authenticate is discarded (the client uploads again)."""
        digest = hashlib.sha256()
        count = chunk_count(upload.row.size)
        index = 0
        try:
            for index, sealed in enumerate(upload.staging.read()):
                digest.update(upload.key.open(index, sealed, last=index == count - 1))
            if index != count - 1:
                raise Corrupt(f"{index + 1} of {count} chunks were staged")
        except Corrupt as exc:
            self.discard(upload.row.tenant, upload.row.upload_id)
            raise DataLoss(
                f"upload {upload.row.upload_id!r} was damaged while stored ({exc}) and was "
                "discarded: upload it again"
            ) from None
        return digest.hexdigest()

    def discard(self, tenant: str, upload_id: str) -> None:
        self.metadata.drop_upload(tenant, upload_id)
        self.place.discard(tenant, upload_id)

    # -- reading -------------------------------------------------------------------------

    def read(self, tenant: str, sha256: str, offset: int = 0, group: int = 1) -> Iterator[bytes]:
        """Plaintext from `offset`, `group` chunks at a time, each authenticated before it
        is given out; from offset 0 the digest is re-checked at the end."""
        row = self.metadata.blob(tenant, sha256)
        if row is None:
            raise FileNotFoundError(sha256)
        key = self.keys.unwrap(row.kek_id, row.wrapped_key)
        count = chunk_count(row.size)
        stored = self.place.size(tenant, sha256)
        if stored is None:
            raise Corrupt(f"the stored data of blob {sha256} is missing")
        if stored != row.size + count * TAG:
            raise Corrupt(f"the stored data of blob {sha256} has the wrong length")
        digest = hashlib.sha256() if offset == 0 else None
        first = offset // CHUNK
        batch: list[bytes] = []
        index = first - 1
        for index, sealed in enumerate(self.place.read(tenant, sha256, first), start=first):
            chunk = key.open(index, sealed, last=index == count - 1)
            if digest is not None:
                digest.update(chunk)
            batch.append(chunk[offset - index * CHUNK :] if index == first else chunk)
            if len(batch) == group:
                yield b"".join(batch)
                batch.clear()
        if first < count and index != count - 1:
            raise Corrupt(f"blob {sha256} ended after {index + 1} of {count} chunks")
        if batch:
            yield b"".join(batch)
        if digest is not None and digest.hexdigest() != sha256:
            raise Corrupt(f"blob {sha256} does not hash to its name")

    def remove(self, tenant: str, sha256: str) -> None:
        """Delete a blob nothing references any more: row first, then the data."""
        self.metadata.delete_blob(tenant, sha256)
        self.place.remove(tenant, sha256)

    def sweep(self) -> int:
        """At start: delete blobs no row names and uploads without staging."""
        removed = self.place.sweep({(b.tenant, b.sha256) for b in self.metadata.blobs()})
        for upload in self.metadata.uploads():
            if not self.place.has_staging(upload.tenant, upload.upload_id):
                self.metadata.drop_upload(upload.tenant, upload.upload_id)
        return removed


#: hashes uploads' chunks while they are sealed (sha256 releases the GIL; AES-GCM does not)
_HASHING = ThreadPoolExecutor(4, thread_name_prefix="blob-hash")


def _update(digest: hashlib._Hash, chunks: list[bytearray | memoryview]) -> None:
    for chunk in chunks:
        digest.update(chunk)


class DigestMismatch(ValueError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"the data hashes to {actual}, not the {expected} announced")
