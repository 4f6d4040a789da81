"""What storage counts for Prometheus: bytes by tenant, stored and reserved by uploads in
progress, read at each scrape with one grouped query on a connection of its own: a scrape
runs on prometheus_client's thread and must never hold the lock the service's own
metadata calls take (SQLite's WAL lets readers and the writer go on together)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llmos.database import Database
from services.storage.metadata import BYTES_BY_TENANT


class StorageCollector(Collector):
    def __init__(self, database: Database) -> None:
        self._db = database  # its own lock: scrapes may come on several threads at once

    def close(self) -> None:
        self._db.close()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "llmos_storage_bytes",
            "Bytes a tenant holds: stored (encrypted blobs) or uploading (reserved).",
            labels=["tenant", "kind"],
        )
        rows = self._db.all(BYTES_BY_TENANT)
        for tenant, kind, total in rows:
            family.add_metric([str(tenant), str(kind)], int(total))
        yield family
