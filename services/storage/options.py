"""The storage service's own configuration (LLMOS_* variables beyond the common ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmos.config import EnvReader
from llmos.database import POSTGRES_SCHEMES


@dataclass(frozen=True)
class StorageOptions:
    #: where blobs, metadata and keys live (default <data dir>/storage)
    directory: Path | None
    #: a key-encryption key file (64 hex characters) instead of generated ones
    kek_file: Path | None
    #: bytes a tenant may store unless its quota says otherwise
    tenant_quota_bytes: int
    #: an upload nobody has written to for this long is discarded (reservation and file)
    upload_idle_s: float = 86_400.0
    #: PostgreSQL for the metadata ("" : SQLite under the storage directory)
    database_url: str = ""
    #: an S3-compatible endpoint for the blobs ("": files under the storage directory)
    s3_endpoint: str = ""
    s3_bucket: str = "llmos"
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    #: a CA bundle to check an https endpoint with ("": the system's)
    s3_ca_file: str = ""

    def root(self, data_dir: Path) -> Path:
        return self.directory or data_dir / "storage"


def read_storage_options(env: EnvReader) -> StorageOptions:
    directory = env.text(
        "STORAGE_DIR",
        "",
        doc="where blobs, metadata and keys live",
        default_shown="`<data dir>/storage`",
    )
    kek_file = env.text(
        "STORAGE_KEK_FILE",
        "",
        doc="a key-encryption key file (64 hex characters)",
        default_shown="generated",
    )
    if kek_file and not Path(kek_file).is_file():
        env.errors.append(f"LLMOS_STORAGE_KEK_FILE: {kek_file!r} is not a file")
    return StorageOptions(
        directory=Path(directory).resolve() if directory else None,
        kek_file=Path(kek_file).resolve() if kek_file else None,
        tenant_quota_bytes=env.integer(
            "STORAGE_TENANT_QUOTA_BYTES",
            100 << 30,
            minimum=0,
            maximum=1 << 50,
            doc="bytes a tenant may store unless its own quota says otherwise",
            default_shown="100 GiB",
        ),
        upload_idle_s=env.number(
            "STORAGE_UPLOAD_IDLE_S",
            86_400.0,
            minimum=1.0,
            maximum=365 * 86_400.0,
            doc="seconds an unfinished upload may sit idle before it is discarded and its "
            "quota reservation released",
            default_shown="1 day",
        ),
        database_url=env.url(
            "STORAGE_DATABASE_URL",
            "",
            POSTGRES_SCHEMES,
            doc="PostgreSQL for the metadata, shared by every storage replica; with no "
            "user and password in it, those of `<secrets dir>/postgres/storage.json`",
            default_shown="SQLite under the storage directory",
        ),
        s3_endpoint=env.url(
            "STORAGE_S3_ENDPOINT",
            "",
            ("http", "https"),
            doc="an S3-compatible object store for the blobs (encrypted before they leave); "
            "its keys are `<secrets dir>/s3/storage.json` (user: access key, password: "
            "secret key)",
            default_shown="files under the storage directory",
        ),
        s3_bucket=env.text("STORAGE_S3_BUCKET", "llmos", doc="the bucket (created if missing)"),
        s3_prefix=env.text("STORAGE_S3_PREFIX", "", doc="a prefix for every object key"),
        s3_region=env.text("STORAGE_S3_REGION", "us-east-1", doc="the bucket's region"),
        s3_ca_file=env.text(
            "STORAGE_S3_CA_FILE",
            "",
            doc="a CA bundle to check an https endpoint's certificate with",
            default_shown="the system's",
        ),
    )
