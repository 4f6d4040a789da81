"""What storage counts for Prometheus: bytes by tenant, stored and reserved by uploads in
progress, read from the metadata database at each scrape (one grouped query)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.storage.metadata import Metadata


class StorageCollector(Collector):
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "llmos_storage_bytes",
            "Bytes a tenant holds: stored (encrypted blobs) or uploading (reserved).",
            labels=["tenant", "kind"],
        )
        for tenant, kind, total in self._metadata.bytes_by_tenant():
            family.add_metric([tenant, kind], total)
        yield family
