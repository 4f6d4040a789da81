"""What the audit service counts for Prometheus: how far the log trails what services
published (the oldest record of the batch being committed, from its JetStream timestamp:
it keeps growing while commits fail) and how many records still wait in the stream. Both
fall to 0 when the stream is drained, and on a stand-by replica (the writer reports)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from nats.aio.msg import Msg
from prometheus_client import Counter, Gauge

INGEST_LAG = Gauge(
    "llmos_audit_ingest_lag_seconds",
    "Age of the oldest record in the batch being committed to the audit log (0 when idle).",
)
PENDING = Gauge("llmos_audit_pending_records", "Audit records waiting in JetStream.")
RECORDS = Counter("llmos_audit_records", "Audit records committed to the log.")


def observe_batch(messages: Sequence[Msg]) -> None:
    """A batch is about to be committed (again, if the last try failed)."""
    oldest = min(message.metadata.timestamp.timestamp() for message in messages)
    INGEST_LAG.set(max(time.time() - oldest, 0.0))
    PENDING.set(messages[-1].metadata.num_pending)


def observe_idle() -> None:
    """A fetch found nothing: the log is current."""
    INGEST_LAG.set(0)
    PENDING.set(0)
