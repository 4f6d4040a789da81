"""Taking audit events from JetStream into the log without losing or doubling one.

A durable pull consumer (`audit`) on LLMOS_AUDIT hands out batches; each batch is chained
and committed in one transaction, and only then acknowledged. A crash before the commit
leaves the batch unacknowledged, so JetStream delivers it again (after the ack wait); a
crash between commit and acknowledgement delivers records already stored, which the
log recognises by event id and skips.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from llmos import subjects
from services.audit.records import Privacy, parse
from services.audit.store import AuditLog

log = logging.getLogger("llmos.audit.ingest")

CONSUMER = "audit"
FETCH_WAIT_S = 1.0


class Ingest:
    """The consumer loop feeding one AuditLog."""

    def __init__(
        self,
        js: JetStreamContext,
        audit_log: AuditLog,
        privacy: Privacy,
        batch: int,
        ack_wait_s: float,
    ) -> None:
        self._js = js
        self._log = audit_log
        self._privacy = privacy
        self._batch = batch
        self._ack_wait_s = ack_wait_s
        self.recorded = 0
        self.duplicates = 0

    async def subscribe(self) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            durable_name=CONSUMER,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait_s,
            max_ack_pending=max(10_000, 2 * self._batch),
            filter_subject=subjects.ALL_AUDIT,
        )
        await self._js.add_consumer(subjects.AUDIT_STREAM, config)
        return await self._js.pull_subscribe_bind(CONSUMER, stream=subjects.AUDIT_STREAM)

    async def run(self) -> None:
        """Ingest until cancelled; a failing batch is retried (it was not acknowledged)."""
        subscription = await self.subscribe()
        while True:
            try:
                messages = await subscription.fetch(self._batch, timeout=FETCH_WAIT_S)
            except TimeoutError:
                continue
            except Exception as exc:  # NATS reconnecting: wait for it
                log.warning("audit fetch failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            await self.take(messages)

    async def take(self, messages: list[Msg]) -> None:
        now = time.time_ns()
        prefix = subjects.AUDIT_PREFIX + "."
        entries = []
        for message in messages:
            source = message.subject.removeprefix(prefix)
            sequence = message.metadata.sequence.stream
            record = parse(message.data, source, sequence)
            entries.append(self._privacy.entry(record, now))
        try:
            new = await asyncio.to_thread(self._log.append, entries)
        except Exception:
            log.exception("audit batch not committed; JetStream will deliver it again")
            await asyncio.sleep(1.0)
            return
        for message in messages:
            await message.ack()
        self.recorded += new
        self.duplicates += len(entries) - new
