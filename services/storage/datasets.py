"""Datasets: a tenant's named, described reference to an uploaded blob of JSON lines.

A dataset pins its blob (the blob cannot be deleted while a dataset uses it) and counts
its records once, when it is created; deleting the last user of a blob deletes the blob.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from llmos.errors import FailedPrecondition, NotFound
from services.storage.checks import check_description, check_name, check_sha256, check_tenant
from services.storage.metadata import DatasetRow
from services.storage.store import Store


class Datasets:
    """Create, read, list and delete a tenant's datasets."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, tenant: str, name: str, sha256: str, description: str) -> DatasetRow:
        """A new dataset over an uploaded blob; a name is never silently reused."""
        tenant = check_tenant(tenant)
        name = check_name(name, "name")
        sha256 = check_sha256(sha256)
        check_description(description)
        blob = self._store.meta.blob(tenant, sha256)
        if blob is None:
            raise NotFound(f"blob {sha256} does not exist; upload the data first")
        records = await asyncio.to_thread(self._count_lines, tenant, sha256)
        row = DatasetRow(tenant, name, sha256, blob.size, records, description, 0.0)
        async with self._store.lock:
            if self._store.meta.dataset(tenant, name) is not None:
                raise FailedPrecondition(f"dataset {name!r} already exists; delete it first")
            row = dataclasses.replace(row, created=time.time())
            self._store.meta.put_dataset(row)
        self._store.record(tenant, "storage.dataset.create", f"dataset/{name}", sha256)
        return row

    def _count_lines(self, tenant: str, sha256: str) -> int:
        lines, last = 0, b"\n"
        for chunk in self._store.data(tenant, sha256):
            lines += chunk.count(b"\n")
            last = chunk[-1:] or last
        return lines + (0 if last == b"\n" else 1)

    def get(self, tenant: str, name: str) -> DatasetRow:
        """The tenant's dataset of that name."""
        tenant = check_tenant(tenant)
        row = self._store.meta.dataset(tenant, check_name(name, "name"))
        if row is None:
            raise NotFound(f"dataset {name!r} does not exist")
        return row

    def list(self, tenant: str) -> list[DatasetRow]:
        """Every dataset of the tenant."""
        return self._store.meta.datasets(check_tenant(tenant))

    async def delete(self, tenant: str, name: str) -> DatasetRow:
        """Delete a dataset, and its blob if nothing else uses it."""
        async with self._store.lock:
            row = self.get(tenant, name)
            self._store.meta.delete_dataset(row.tenant, row.name)
            self._store.release(row.tenant, row.sha256)
        self._store.record(row.tenant, "storage.dataset.delete", f"dataset/{row.name}", row.sha256)
        return row
