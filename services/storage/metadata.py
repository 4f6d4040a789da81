"""Storage metadata: blobs, uploads in progress, datasets, the model registry, quotas.

SQLite in WAL mode is the embedded default; PostgreSQL (llmos.database) is the shared one
that several storage replicas use at once. Every change is one transaction, exclusive
across replicas, so a process killed at any instant leaves the old state or the new one,
never a torn one; blobs are written and put into place *before* the row that names them is
committed, and blobs no row names are swept at start. Everything is keyed by tenant: no
query can reach across.

The class is the one narrow interface the service uses (plain methods, plain values).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmos.database import Database, SqliteDatabase, copy_tables

#: (tenant, kind, bytes) for every tenant: "stored" blobs, "uploading" reserved
BYTES_BY_TENANT = (
    "SELECT tenant, 'stored', SUM(size) FROM blobs GROUP BY tenant "
    "UNION ALL SELECT tenant, 'uploading', SUM(size) FROM uploads GROUP BY tenant"
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
  tenant TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
  kek_id TEXT NOT NULL, wrapped_key BLOB NOT NULL, created REAL NOT NULL,
  PRIMARY KEY (tenant, sha256));
CREATE TABLE IF NOT EXISTS uploads (
  tenant TEXT NOT NULL, upload_id TEXT NOT NULL, size INTEGER NOT NULL,
  expected_sha256 TEXT NOT NULL, received INTEGER NOT NULL,
  kek_id TEXT NOT NULL, wrapped_key BLOB NOT NULL, created REAL NOT NULL,
  PRIMARY KEY (tenant, upload_id));
CREATE TABLE IF NOT EXISTS datasets (
  tenant TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
  records INTEGER NOT NULL, description TEXT NOT NULL, created REAL NOT NULL,
  PRIMARY KEY (tenant, name));
CREATE TABLE IF NOT EXISTS model_versions (
  tenant TEXT NOT NULL, model TEXT NOT NULL, version INTEGER NOT NULL,
  files TEXT NOT NULL, metadata TEXT NOT NULL, lineage TEXT NOT NULL,
  created REAL NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant, model, version));
CREATE TABLE IF NOT EXISTS aliases (
  tenant TEXT NOT NULL, model TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
  updated REAL NOT NULL, PRIMARY KEY (tenant, model, alias));
CREATE TABLE IF NOT EXISTS quotas (tenant TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
"""

#: every table and its columns, in order: what a backup copies
TABLES: dict[str, tuple[str, ...]] = {
    "blobs": ("tenant", "sha256", "size", "kek_id", "wrapped_key", "created"),
    "uploads": (
        "tenant", "upload_id", "size", "expected_sha256", "received", "kek_id",
        "wrapped_key", "created",
    ),
    "datasets": ("tenant", "name", "sha256", "size", "records", "description", "created"),
    "model_versions": (
        "tenant", "model", "version", "files", "metadata", "lineage", "created", "deleted",
    ),
    "aliases": ("tenant", "model", "alias", "version", "updated"),
    "quotas": ("tenant", "bytes"),
}  # fmt: skip

#: the name of a SQLite metadata file (the embedded default and every backup's snapshot)
SQLITE_FILE = "metadata.sqlite"


@dataclass(frozen=True)
class BlobRow:
    tenant: str
    sha256: str
    size: int
    kek_id: str
    wrapped_key: bytes
    created: float


@dataclass(frozen=True)
class UploadRow:
    tenant: str
    upload_id: str
    size: int
    expected_sha256: str
    received: int
    kek_id: str
    wrapped_key: bytes


@dataclass(frozen=True)
class DatasetRow:
    tenant: str
    name: str
    sha256: str
    size: int
    records: int
    description: str
    created: float


@dataclass(frozen=True)
class VersionRow:
    tenant: str
    model: str
    version: int
    files: dict[str, str]  # path in the model folder -> blob sha256
    metadata: dict[str, Any]
    lineage: dict[str, Any]
    created: float
    deleted: bool
    aliases: tuple[str, ...] = ()


class Metadata:
    """The metadata database (thread-safe: one connection behind a lock)."""

    def __init__(self, database: Database | Path) -> None:
        self.db = SqliteDatabase(database) if isinstance(database, Path) else database
        self.db.create(SCHEMA)
        self._tx = self.db.transaction
        self._one = self.db.one
        self._all = self.db.all

    def close(self) -> None:
        self.db.close()

    def is_empty(self) -> bool:
        """Whether no table holds a row (a store a backup may be restored into)."""
        return all(self._one(f"SELECT 1 FROM {table} LIMIT 1") is None for table in TABLES)

    # -- blobs -------------------------------------------------------------------------

    def blob(self, tenant: str, sha256: str) -> BlobRow | None:
        row = self._one(
            "SELECT tenant, sha256, size, kek_id, wrapped_key, created FROM blobs "
            "WHERE tenant=? AND sha256=?",
            tenant,
            sha256,
        )
        return BlobRow(*row) if row else None

    def blobs(self) -> list[BlobRow]:
        rows = self._all("SELECT tenant, sha256, size, kek_id, wrapped_key, created FROM blobs")
        return [BlobRow(*r) for r in rows]

    def tenant_bytes(self, tenant: str) -> int:
        row = self._one("SELECT COALESCE(SUM(size), 0) FROM blobs WHERE tenant=?", tenant)
        return int(row[0]) if row else 0

    def uploading_bytes(self, tenant: str) -> int:
        """Bytes declared by the tenant's uploads in progress (reserved against its quota)."""
        row = self._one("SELECT COALESCE(SUM(size), 0) FROM uploads WHERE tenant=?", tenant)
        return int(row[0]) if row else 0

    def quota(self, tenant: str, default: int) -> int:
        row = self._one("SELECT bytes FROM quotas WHERE tenant=?", tenant)
        return int(row[0]) if row else default

    def set_quota(self, tenant: str, limit: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO quotas(tenant, bytes) VALUES (?, ?) "
                "ON CONFLICT(tenant) DO UPDATE SET bytes=excluded.bytes",
                (tenant, limit),
            )

    def commit_upload(self, upload: UploadRow, sha256: str) -> bool:
        """The finished upload becomes a blob (or a second copy is dropped): True if the
        tenant already had this content (deduplicated)."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM uploads WHERE tenant=? AND upload_id=?",
                (upload.tenant, upload.upload_id),
            )
            exists = db.execute(
                "SELECT 1 FROM blobs WHERE tenant=? AND sha256=?", (upload.tenant, sha256)
            ).fetchone()
            if exists:
                return True
            db.execute(
                "INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?)",
                (
                    upload.tenant,
                    sha256,
                    upload.size,
                    upload.kek_id,
                    upload.wrapped_key,
                    time.time(),
                ),
            )
            return False

    def references(self, tenant: str, sha256: str) -> int:
        """How many datasets and live model versions use a blob."""
        datasets = self._one(
            "SELECT COUNT(*) FROM datasets WHERE tenant=? AND sha256=?", tenant, sha256
        )
        count = int(datasets[0]) if datasets else 0
        for (files,) in self._all(
            "SELECT files FROM model_versions WHERE tenant=? AND deleted=0", tenant
        ):
            count += sum(1 for digest in json.loads(files).values() if digest == sha256)
        return count

    def delete_blob(self, tenant: str, sha256: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM blobs WHERE tenant=? AND sha256=?", (tenant, sha256))

    def rewrap(self, tenant: str, sha256: str, kek_id: str, wrapped: bytes) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE blobs SET kek_id=?, wrapped_key=? WHERE tenant=? AND sha256=?",
                (kek_id, wrapped, tenant, sha256),
            )

    def rewrap_upload(self, tenant: str, upload_id: str, kek_id: str, wrapped: bytes) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE uploads SET kek_id=?, wrapped_key=? WHERE tenant=? AND upload_id=?",
                (kek_id, wrapped, tenant, upload_id),
            )

    def kek_ids_in_use(self) -> set[str]:
        rows = self._all("SELECT kek_id FROM blobs UNION SELECT kek_id FROM uploads")
        return {str(r[0]) for r in rows}

    # -- uploads -----------------------------------------------------------------------

    def upload(self, tenant: str, upload_id: str) -> UploadRow | None:
        row = self._one(
            "SELECT tenant, upload_id, size, expected_sha256, received, kek_id, wrapped_key "
            "FROM uploads WHERE tenant=? AND upload_id=?",
            tenant,
            upload_id,
        )
        return UploadRow(*row) if row else None

    def uploads(self) -> list[UploadRow]:
        rows = self._all(
            "SELECT tenant, upload_id, size, expected_sha256, received, kek_id, wrapped_key "
            "FROM uploads"
        )
        return [UploadRow(*r) for r in rows]

    def begin_upload(self, upload: UploadRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (upload.tenant, upload.upload_id, upload.size, upload.expected_sha256,
                 upload.received, upload.kek_id, upload.wrapped_key, time.time()),
            )  # fmt: skip

    def set_received(self, tenant: str, upload_id: str, received: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE uploads SET received=? WHERE tenant=? AND upload_id=?",
                (received, tenant, upload_id),
            )

    def drop_upload(self, tenant: str, upload_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM uploads WHERE tenant=? AND upload_id=?", (tenant, upload_id))

    # -- datasets ----------------------------------------------------------------------

    def dataset(self, tenant: str, name: str) -> DatasetRow | None:
        row = self._one("SELECT * FROM datasets WHERE tenant=? AND name=?", tenant, name)
        return DatasetRow(*row) if row else None

    def datasets(self, tenant: str) -> list[DatasetRow]:
        rows = self._all("SELECT * FROM datasets WHERE tenant=? ORDER BY name", tenant)
        return [DatasetRow(*r) for r in rows]

    def put_dataset(self, row: DatasetRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.tenant, row.name, row.sha256, row.size, row.records, row.description,
                 row.created),
            )  # fmt: skip

    def delete_dataset(self, tenant: str, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM datasets WHERE tenant=? AND name=?", (tenant, name))

    # -- model registry ----------------------------------------------------------------

    def add_version(
        self,
        tenant: str,
        model: str,
        files: dict[str, str],
        metadata: dict[str, Any],
        lineage: dict[str, Any],
    ) -> int:
        """A new version of `model`, numbered after the last one (deleted ones count)."""
        with self._tx() as db:
            (last,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM model_versions WHERE tenant=? AND model=?",
                (tenant, model),
            ).fetchone()
            version = int(last) + 1
            db.execute(
                "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                (tenant, model, version, json.dumps(files, sort_keys=True),
                 json.dumps(metadata, sort_keys=True), json.dumps(lineage, sort_keys=True),
                 time.time()),
            )  # fmt: skip
            return version

    def version(self, tenant: str, model: str, version: int) -> VersionRow | None:
        row = self._one(
            "SELECT * FROM model_versions WHERE tenant=? AND model=? AND version=?",
            tenant,
            model,
            version,
        )
        return self._version(row) if row else None

    def versions(self, tenant: str, model: str) -> list[VersionRow]:
        rows = self._all(
            "SELECT * FROM model_versions WHERE tenant=? AND model=? AND deleted=0 "
            "ORDER BY version",
            tenant,
            model,
        )
        return [self._version(r) for r in rows]

    def models(self, tenant: str) -> list[str]:
        rows = self._all(
            "SELECT DISTINCT model FROM model_versions WHERE tenant=? AND deleted=0 ORDER BY model",
            tenant,
        )
        return [str(r[0]) for r in rows]

    def _version(self, row: tuple[Any, ...]) -> VersionRow:
        tenant, model, version, files, metadata, lineage, created, deleted = row
        aliases = tuple(
            str(a[0])
            for a in self._all(
                "SELECT alias FROM aliases WHERE tenant=? AND model=? AND version=? ORDER BY alias",
                tenant,
                model,
                version,
            )
        )
        return VersionRow(
            tenant, model, int(version), json.loads(files), json.loads(metadata),
            json.loads(lineage), float(created), bool(deleted), aliases,
        )  # fmt: skip

    def alias(self, tenant: str, model: str, alias: str) -> int | None:
        row = self._one(
            "SELECT version FROM aliases WHERE tenant=? AND model=? AND alias=?",
            tenant,
            model,
            alias,
        )
        return int(row[0]) if row else None

    def set_alias(self, tenant: str, model: str, alias: str, version: int) -> int | None:
        """Point `alias` at `version` atomically; returns the version it pointed at."""
        with self._tx() as db:
            previous = db.execute(
                "SELECT version FROM aliases WHERE tenant=? AND model=? AND alias=?",
                (tenant, model, alias),
            ).fetchone()
            db.execute(
                "INSERT INTO aliases VALUES (?, ?, ?, ?, ?) ON CONFLICT(tenant, model, alias) "
                "DO UPDATE SET version=excluded.version, updated=excluded.updated",
                (tenant, model, alias, version, time.time()),
            )
            return int(previous[0]) if previous else None

    def delete_version(self, tenant: str, model: str, version: int) -> None:
        """Mark a version deleted and drop the aliases that pointed at it."""
        with self._tx() as db:
            db.execute(
                "UPDATE model_versions SET deleted=1 WHERE tenant=? AND model=? AND version=?",
                (tenant, model, version),
            )
            db.execute(
                "DELETE FROM aliases WHERE tenant=? AND model=? AND version=?",
                (tenant, model, version),
            )

    # -- backup --------------------------------------------------------------------------

    def backup_to(self, target: Path) -> None:
        """A consistent copy of the database into a new SQLite file, taken while it stays
        in use — whichever database this is, so a backup restores into either."""
        if target.exists():
            raise FileExistsError(target)
        snapshot = Metadata(target)
        try:
            copy_tables(self.db, snapshot.db, TABLES)
        finally:
            snapshot.close()

    def restore_from(self, source: Path) -> None:
        """Fill this empty database with the rows of a backup's SQLite snapshot."""
        snapshot = Metadata(source)
        try:
            copy_tables(snapshot.db, self.db, TABLES)
        finally:
            snapshot.close()

    def stats(self) -> tuple[int, int, int]:
        blobs = self._one("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs")
        models = self._one(
            "SELECT COUNT(DISTINCT tenant || '/' || model) FROM model_versions WHERE deleted=0"
        )
        assert blobs is not None and models is not None
        return int(blobs[0]), int(blobs[1]), int(models[0])
