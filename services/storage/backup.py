"""Backups of a store, and restoring one into a store that holds no data.

A backup is a directory, the same whichever backends the store runs on: a SQLite snapshot
of the metadata, the sealed blobs it names (still encrypted, laid out as on a local disk)
and the key files — it is useless without the keys, and as sensitive as the store itself.
So a backup of a store on local disk and SQLite restores into one on S3 and PostgreSQL and
back: the way to move between them.

Plain files, SQL and blob-place calls with no service around them, so the offline restore
tool (`python -m services.storage.restore`) and the running service share it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from services.storage.blobs import BlobFiles
from services.storage.crypto import KeyEncryptionKeys
from services.storage.metadata import SQLITE_FILE, BlobRow, Metadata
from services.storage.places import SEALED, LocalDisk, blob_name

MANIFEST = "manifest.json"


def backup(files: BlobFiles, target: Path) -> tuple[int, int]:
    """Metadata snapshot + the sealed blobs it names + the key files. Returns the number
    of blobs and their stored bytes."""
    target.mkdir(parents=True)
    target.chmod(0o700)
    files.metadata.backup_to(target / SQLITE_FILE)
    snapshot = Metadata(target / SQLITE_FILE)
    try:
        rows = snapshot.blobs()
    finally:
        snapshot.close()
    copy = LocalDisk(target)
    size = 0
    for row in rows:
        copy.write(row.tenant, row.sha256, files.place.read(row.tenant, row.sha256, 0))
        size += copy.size(row.tenant, row.sha256) or 0
    shutil.rmtree(target / "uploads", ignore_errors=True)
    shutil.copytree(files.keys.directory, target / "keys")
    manifest = {"blobs": len(rows), "bytes": size, "digest": _manifest_digest(rows)}
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return len(rows), size


def _manifest_digest(rows: list[BlobRow]) -> str:
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: (r.tenant, r.sha256)):
        digest.update(f"{row.tenant}/{row.sha256}/{row.size}\n".encode())
    return digest.hexdigest()


def is_backup(source: Path) -> bool:
    """Whether `source` looks like a directory `backup` wrote (it has a manifest)."""
    return (source / MANIFEST).is_file()


def restore(source: Path, root: Path) -> int:
    """Bring a local storage directory that has no data yet back to a backup (the
    offline tool); returns the number of blobs restored."""
    if (root / SQLITE_FILE).exists():
        raise FileExistsError(f"{root} already holds storage data; restore into a fresh one")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / SQLITE_FILE, root / SQLITE_FILE)
    if (source / "blobs").is_dir():
        shutil.copytree(source / "blobs", root / "blobs", dirs_exist_ok=True)
    shutil.copytree(source / "keys", root / "keys", dirs_exist_ok=True)
    return int(json.loads((source / MANIFEST).read_text())["blobs"])


def restore_into(files: BlobFiles, source: Path, kek_file: Path | None) -> BlobFiles:
    """Fill a store that holds no data (any backends) with a backup's contents: keys
    first, then every blob, then the metadata naming them (so a crash half way leaves
    blobs no row names, which the next start sweeps, and never a row without its blob)."""
    keys_dir = files.keys.directory
    shutil.rmtree(keys_dir, ignore_errors=True)
    shutil.copytree(source / "keys", keys_dir)
    keys_dir.chmod(0o700)
    snapshot = Metadata(source / SQLITE_FILE)
    try:
        rows = snapshot.blobs()
    finally:
        snapshot.close()
    for row in rows:
        path = source / blob_name(row.tenant, row.sha256)
        files.place.write(row.tenant, row.sha256, _pieces(path))
    files.metadata.restore_from(source / SQLITE_FILE)
    return BlobFiles(files.place, files.metadata, KeyEncryptionKeys(keys_dir, kek_file))


def _pieces(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while piece := file.read(SEALED):
            yield piece
