"""The open store every part of the storage service works on: its files and metadata,
the lock that serialises changes which read then write, and the audit trail.

One object, shared, so that a restore — which swaps the files underneath — swaps them for
datasets, the registry, transfers and quotas at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from llmos.errors import DataLoss
from services.storage.blobs import BlobFiles
from services.storage.crypto import Corrupt
from services.storage.metadata import Metadata

#: Writes one audit record of a change: tenant, action, resource, detail. The service
#: binds it to its audit publisher; the logic here never sees the transport.
AuditTrail = Callable[[str, str, str, str], None]

#: The tenant whose models every tenant may read, and under which store-wide changes
#: (key rotation, backup, restore) are audited.
SYSTEM_TENANT = "system"


class Store:
    """The blob files and metadata now in use, their lock, and where changes are audited."""

    def __init__(self, files: BlobFiles, audit: AuditTrail) -> None:
        self.files = files
        self._audit = audit
        self.lock = asyncio.Lock()  # registry changes that read then write

    @property
    def meta(self) -> Metadata:
        """The metadata of the files now in use."""
        return self.files.metadata

    def record(self, tenant: str, action: str, resource: str, detail: str = "") -> None:
        """Audit a change that succeeded."""
        self._audit(tenant, action, resource, detail)

    def data(self, tenant: str, sha256: str) -> Iterator[bytes]:
        """A blob's plaintext, chunk by chunk; damaged data is DATA_LOSS, never served."""
        try:
            yield from self.files.read(tenant, sha256)
        except Corrupt as exc:
            raise DataLoss(f"blob {sha256} is damaged: {exc}") from None

    def release(self, tenant: str, sha256: str) -> None:
        """Delete a blob once nothing refers to it (really gone: row and file)."""
        if self.meta.references(tenant, sha256) == 0 and self.meta.blob(tenant, sha256):
            self.files.remove(tenant, sha256)

    def close(self) -> None:
        """Close the metadata database of the files now in use."""
        self.meta.close()
