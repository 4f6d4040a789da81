"""Store-wide operations of the system's admins: rotating the key-encryption key, and
backing up or restoring the whole store while the service runs.

Each runs under the store's lock (no blob is deleted while a snapshot is taken, no
registry change interleaves with a restore) and is audited under the system tenant.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from llmos.errors import FailedPrecondition, InvalidArgument, NotFound
from services.storage.backup import backup, is_backup, restore_into
from services.storage.blobs import BlobFiles
from services.storage.store import SYSTEM_TENANT, Store


class StoreOperations:
    """Key rotation, backup and restore of the open store."""

    def __init__(self, store: Store, kek_file: Path | None) -> None:
        self._store = store
        self._kek_file = kek_file

    async def rotate_key(self) -> tuple[str, int]:
        """A new KEK with every data key re-wrapped under it: (its id, keys re-wrapped)."""
        async with self._store.lock:
            new_id, count = await asyncio.to_thread(rotate_key, self._store.files)
        self._store.record(
            SYSTEM_TENANT, "storage.key.rotate", f"kek/{new_id}", f"{count} re-wrapped"
        )
        return new_id, count

    async def backup(self, path: str) -> tuple[Path, int, int]:
        """Back the store up into a new directory: (where, blobs, bytes)."""
        target = _absolute(path)
        if await asyncio.to_thread(target.exists):
            raise FailedPrecondition(f"{target} exists; a backup goes into a new directory")
        async with self._store.lock:  # no blob is deleted while the snapshot is taken
            blobs, size = await asyncio.to_thread(backup, self._store.files, target)
        self._store.record(SYSTEM_TENANT, "storage.backup", str(target), f"{blobs} blobs")
        return target, blobs, size

    async def restore(self, path: str) -> tuple[Path, int, int]:
        """Replace a store that holds no data with a backup: (from where, blobs, bytes)."""
        source = _absolute(path)
        if not await asyncio.to_thread(is_backup, source):
            raise NotFound(f"{source} is not a storage backup (no manifest.json)")
        async with self._store.lock:
            if not await asyncio.to_thread(self._store.meta.is_empty):
                raise FailedPrecondition(
                    "this storage already holds data; restore into a fresh storage service"
                )
            files = await asyncio.to_thread(restore_into, self._store.files, source, self._kek_file)
            self._store.files = files
        count, size, _ = files.metadata.stats()
        self._store.record(SYSTEM_TENANT, "storage.restore", str(source), f"{count} blobs")
        return source, count, size


def _absolute(path: str) -> Path:
    if not path or not Path(path).is_absolute():
        raise InvalidArgument("path", "must be an absolute path on the storage host")
    return Path(path)


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
