"""What the audit service counts for Prometheus: how far the log trails what services
published (the oldest record of the batch being committed, from its JetStream timestamp:
it keeps growing while commits fail) and how many records still wait in the stream. Both
fall to 0 when the stream is drained, and on a stand-by replica (the writer reports)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from nats.aio.msg import Msg
from prometheus_client import Counter, Gauge

from llmos import subjects
from llmos.events import new_event
from llmos.messaging import EventPublisher
from llmos.v1 import events_pb2

log = logging.getLogger("llmos.audit.lag")

INGEST_LAG = Gauge(
    "llmos_audit_ingest_lag_seconds",
    "Age of the oldest record in the batch being committed to the audit log (0 when idle).",
)
PENDING = Gauge("llmos_audit_pending_records", "Audit records waiting in JetStream.")
RECORDS = Counter("llmos_audit_records", "Audit records committed to the log.")


def observe_batch(messages: Sequence[Msg]) -> tuple[float, int]:
    """A batch is about to be committed (again, if the last try failed): its lag (s) and
    the records still waiting behind it."""
    oldest = min(message.metadata.timestamp.timestamp() for message in messages)
    lag, pending = max(time.time() - oldest, 0.0), messages[-1].metadata.num_pending
    INGEST_LAG.set(lag)
    PENDING.set(pending)
    return lag, pending


def observe_idle() -> None:
    """A fetch found nothing: the log is current."""
    INGEST_LAG.set(0)
    PENDING.set(0)


class LagAlarm:
    """Publishes an `audit_lag` event when ingest falls `threshold_s` behind, and one
    more when it has caught up (under half of it: no flapping at the edge)."""

    def __init__(self, events: EventPublisher | None, threshold_s: float) -> None:
        self._events = events
        self.threshold_s = threshold_s
        self.raised = False

    async def update(self, lag_s: float, pending: int) -> None:
        if not self.raised and lag_s >= self.threshold_s:
            self.raised = True
            log.warning("audit ingest behind", extra={"lag_s": round(lag_s, 1), "pending": pending})
            await self._publish(lag_s, pending, caught_up=False)
        elif self.raised and lag_s < self.threshold_s / 2:
            self.raised = False
            log.info("audit ingest caught up")
            await self._publish(lag_s, pending, caught_up=True)

    async def _publish(self, lag_s: float, pending: int, caught_up: bool) -> None:
        if self._events is None:
            return
        event = new_event("audit")
        event.audit_lag.MergeFrom(
            events_pb2.AuditLag(
                lag_s=lag_s, pending=pending, threshold_s=self.threshold_s, caught_up=caught_up
            )
        )
        try:
            await self._events.publish(subjects.AUDIT_LAG, event)
        except Exception as exc:  # the metric still says it
            log.warning("audit lag event not published", extra={"error": str(exc)})
