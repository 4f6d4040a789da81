"""Backups of a storage directory, and restoring one into a storage that holds no data.

Plain filesystem and SQLite work, with no service around it, so the offline restore tool
(`python -m services.storage.restore`) and the running service share it. A backup holds
a metadata snapshot, the blob files it names (still encrypted) and the key files — it is
useless without the keys, and as sensitive as the store itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from services.storage.blobs import BlobFiles
from services.storage.crypto import KeyEncryptionKeys
from services.storage.metadata import BlobRow, Metadata

MANIFEST = "manifest.json"


def backup(files: BlobFiles, target: Path) -> tuple[int, int]:
    """Metadata snapshot (SQLite online backup) + the blob files it names, still
    encrypted, + the key files (a backup is useless without them; keep it as safe).
    Returns the number of blobs and their bytes on disk."""
    target.mkdir(parents=True)
    target.chmod(0o700)
    files.metadata.backup_to(target / "metadata.sqlite")
    snapshot = Metadata(target / "metadata.sqlite")
    try:
        rows = snapshot.blobs()
    finally:
        snapshot.close()
    size = 0
    for row in rows:
        source = files.blob_path(row.tenant, row.sha256)
        destination = target / source.relative_to(files.root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        size += destination.stat().st_size
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
    """Bring a storage directory that has no data yet back to a backup; returns the
    number of blobs restored."""
    if (root / "metadata.sqlite").exists():
        raise FileExistsError(f"{root} already holds storage data; restore into a fresh one")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "metadata.sqlite", root / "metadata.sqlite")
    if (source / "blobs").is_dir():
        shutil.copytree(source / "blobs", root / "blobs", dirs_exist_ok=True)
    shutil.copytree(source / "keys", root / "keys", dirs_exist_ok=True)
    return int(json.loads((source / MANIFEST).read_text())["blobs"])


def reopen_restored(files: BlobFiles, source: Path, kek_file: Path | None) -> BlobFiles:
    """Swap an empty store for the backup's contents and open them."""
    root = files.root
    files.metadata.close()
    for suffix in ("", "-wal", "-shm"):
        (root / f"metadata.sqlite{suffix}").unlink(missing_ok=True)
    shutil.rmtree(root / "keys", ignore_errors=True)
    restore(source, root)
    metadata = Metadata(root / "metadata.sqlite")
    return BlobFiles(root, metadata, KeyEncryptionKeys(root / "keys", kek_file))
