"""Where sealed blobs are kept: the interface, and the local disk that is the embedded
default (an S3-compatible object store is the other: services.storage.objects).

A place holds bytes it cannot read: every chunk was sealed (encrypted and authenticated)
before it arrives and is opened after it leaves (services.storage.blobs). It keeps two
kinds of thing, each under a tenant's folder named by a digest (no tenant name can shape
a path or key):

- an upload's *staging*: sealed chunks appended in order while the stream lasts, kept
  when it breaks so that a resumed upload goes on from the last whole chunk, then
  finalised, read back if need be, and published as
- a *blob*, named by the digest of its plaintext, read from any chunk on.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from services.storage.crypto import CHUNK, TAG

SEALED = CHUNK + TAG


def tenant_directory(tenant: str) -> str:
    """A tenant's folder name: a digest, so no tenant name can shape a path."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:24]


def blob_name(tenant: str, sha256: str) -> str:
    """A blob's name relative to the place's root (a path, or an object key)."""
    return f"blobs/{tenant_directory(tenant)}/{sha256[:2]}/{sha256}"


def upload_name(tenant: str, upload_id: str) -> str:
    return f"uploads/{tenant_directory(tenant)}/{upload_id}"


class Staging(ABC):
    """The sealed chunks of one upload, as they arrive."""

    #: whole sealed chunks kept: what a resumed upload would find (those appended may
    #: wait in memory until there are enough of them for the place to keep)
    chunks: int

    @abstractmethod
    def append(self, sealed: bytes) -> None:
        """Add sealed chunks after those staged (whole ones; the last may be short)."""

    @abstractmethod
    def finalise(self) -> None:
        """Make everything appended durable; nothing is appended afterwards."""

    @abstractmethod
    def read(self) -> Iterator[bytes]:
        """The finalised staging, one sealed chunk at a time (to check a resumed upload)."""

    @abstractmethod
    def publish(self, tenant: str, sha256: str) -> None:
        """Make the finalised staging the blob `sha256` of `tenant`."""

    @abstractmethod
    def close(self) -> None:
        """Release what is held open; what was appended stays for a resume."""


class BlobPlace(ABC):
    """Sealed uploads and blobs of every tenant."""

    #: where, in words safe to show (no credentials)
    where: str

    @abstractmethod
    def stage(self, tenant: str, upload_id: str, keep: int) -> Staging:
        """An upload's staging: the one a broken stream left, cut back to its whole chunks
        and to at most `keep` of them; a new, empty one when `keep` is 0."""

    @abstractmethod
    def has_staging(self, tenant: str, upload_id: str) -> bool: ...

    @abstractmethod
    def last_write(self, tenant: str, upload_id: str) -> float:
        """When the staging was last written to (epoch seconds; 0 if there is none)."""

    @abstractmethod
    def discard(self, tenant: str, upload_id: str) -> None:
        """Delete an upload's staging (nothing if there is none)."""

    @abstractmethod
    def size(self, tenant: str, sha256: str) -> int | None:
        """The stored (sealed) size of a blob; None if it is missing."""

    @abstractmethod
    def read(self, tenant: str, sha256: str, first_chunk: int) -> Iterator[bytes]:
        """A blob's sealed chunks from `first_chunk` on, one at a time."""

    @abstractmethod
    def write(self, tenant: str, sha256: str, sealed: Iterable[bytes]) -> None:
        """Store a whole blob at once (a restore)."""

    @abstractmethod
    def remove(self, tenant: str, sha256: str) -> None: ...

    @abstractmethod
    def sweep(self, known: set[tuple[str, str]]) -> int:
        """Delete the blobs whose (tenant, sha256) is not in `known`; how many."""


class LocalStaging(Staging):
    def __init__(self, path: Path, root: Path, keep: int) -> None:
        self._path = path
        self._root = root
        self._file: BinaryIO | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        whole = (path.stat().st_size if path.exists() else 0) // SEALED
        self.chunks = min(whole, keep)
        with path.open("a+b") as file:
            file.truncate(self.chunks * SEALED)

    def append(self, sealed: bytes) -> None:
        if self._file is None:
            self._file = self._path.open("ab")
        self._file.write(sealed)
        self.chunks += len(sealed) // SEALED

    def finalise(self) -> None:
        if self._file is None:
            self._file = self._path.open("ab")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.close()

    def read(self) -> Iterator[bytes]:
        with self._path.open("rb") as file:
            while piece := file.read(SEALED):
                yield piece

    def publish(self, tenant: str, sha256: str) -> None:
        target = self._root / blob_name(tenant, sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._path.replace(target)
        _fsync_directory(target.parent)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LocalDisk(BlobPlace):
    """Blob and upload files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "uploads").mkdir(parents=True, exist_ok=True)

    def blob_path(self, tenant: str, sha256: str) -> Path:
        return self.root / blob_name(tenant, sha256)

    def upload_path(self, tenant: str, upload_id: str) -> Path:
        return self.root / upload_name(tenant, upload_id)

    def stage(self, tenant: str, upload_id: str, keep: int) -> Staging:
        return LocalStaging(self.upload_path(tenant, upload_id), self.root, keep)

    def has_staging(self, tenant: str, upload_id: str) -> bool:
        return self.upload_path(tenant, upload_id).exists()

    def last_write(self, tenant: str, upload_id: str) -> float:
        path = self.upload_path(tenant, upload_id)
        return path.stat().st_mtime if path.exists() else 0.0

    def discard(self, tenant: str, upload_id: str) -> None:
        self.upload_path(tenant, upload_id).unlink(missing_ok=True)

    def size(self, tenant: str, sha256: str) -> int | None:
        path = self.blob_path(tenant, sha256)
        return path.stat().st_size if path.exists() else None

    def read(self, tenant: str, sha256: str, first_chunk: int) -> Iterator[bytes]:
        with self.blob_path(tenant, sha256).open("rb") as file:
            file.seek(first_chunk * SEALED)
            while piece := file.read(SEALED):
                yield piece

    def write(self, tenant: str, sha256: str, sealed: Iterable[bytes]) -> None:
        target = self.blob_path(tenant, sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with partial.open("wb") as file:
            for piece in sealed:
                file.write(piece)
            file.flush()
            os.fsync(file.fileno())
        partial.replace(target)

    def remove(self, tenant: str, sha256: str) -> None:
        self.blob_path(tenant, sha256).unlink(missing_ok=True)

    def sweep(self, known: set[tuple[str, str]]) -> int:
        paths = {self.blob_path(tenant, sha256) for tenant, sha256 in known}
        removed = 0
        for path in (self.root / "blobs").glob("*/*/*"):
            if path.is_file() and path not in paths:
                path.unlink()
                removed += 1
        return removed


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
