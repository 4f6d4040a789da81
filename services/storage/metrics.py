"""What storage counts for Prometheus: bytes by tenant, stored and reserved by uploads in
progress, read at each scrape with one grouped query on a read-only connection of its
own: a scrape runs on prometheus_client's thread and must never hold the lock the
service's own metadata calls take (WAL lets readers and the writer go on together)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.storage.metadata import BYTES_BY_TENANT


class StorageCollector(Collector):
    def __init__(self, database: Path) -> None:
        self._db = sqlite3.connect(
            f"file:{database}?mode=ro", uri=True, check_same_thread=False, timeout=2.0
        )
        self._lock = threading.Lock()  # scrapes may come on several threads at once

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "llmos_storage_bytes",
            "Bytes a tenant holds: stored (encrypted blobs) or uploading (reserved).",
            labels=["tenant", "kind"],
        )
        with self._lock:
            rows = self._db.execute(BYTES_BY_TENANT).fetchall()
        for tenant, kind, total in rows:
            family.add_metric([str(tenant), str(kind)], int(total))
        yield family
