"""Which backends a storage service runs on, from its options: the embedded default
(SQLite and files under the storage directory) or the shared ones (PostgreSQL and an
S3-compatible object store), in any combination.

Credentials come from the secrets directory, never from the environment or a log line.
"""

from __future__ import annotations

from pathlib import Path

from llmos.database import Database, PostgresDatabase, SqliteDatabase, service_database_url
from llmos.trust import credentials_file, read_credentials
from services.storage.metadata import SQLITE_FILE
from services.storage.objects import ObjectStore, ObjectStoreConfig
from services.storage.options import StorageOptions
from services.storage.places import BlobPlace, LocalDisk

#: the advisory lock that makes a metadata write transaction exclusive across replicas
#: ("llmos" and 1: storage)
WRITE_LOCK = 0x6C6C6D6F7301


def metadata_database(
    options: StorageOptions, root: Path, secrets_dir: Path, timeout_s: float
) -> Database:
    """A new connection to the metadata database (each user holds its own)."""
    if options.database_url:
        url = service_database_url(options.database_url, secrets_dir, "storage")
        return PostgresDatabase(url, WRITE_LOCK, timeout_s)
    return SqliteDatabase(root / SQLITE_FILE)


def blob_place(options: StorageOptions, root: Path, secrets_dir: Path) -> BlobPlace:
    """Where the sealed blobs go; the bucket is created if it is missing."""
    if not options.s3_endpoint:
        return LocalDisk(root)
    found = read_credentials(credentials_file(secrets_dir / "s3", "storage"))
    config = ObjectStoreConfig(
        endpoint=options.s3_endpoint,
        bucket=options.s3_bucket,
        access_key=found.user,
        secret_key=found.password.reveal(),
        region=options.s3_region,
        ca_file=options.s3_ca_file,
    )
    place = ObjectStore(config, options.s3_prefix)
    place.ensure_bucket()
    return place
