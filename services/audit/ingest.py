"""Taking audit events from JetStream into the log without losing or doubling one.

A durable pull consumer (`audit`) on LLMOS_AUDIT hands out batches; each batch is chained
and committed in one transaction, and only then acknowledged. A crash before the commit
leaves the batch unacknowledged, so JetStream delivers it again (after the ack wait); a
crash between commit and acknowledgement delivers records already stored, which the
log recognises by event id and skips.

One audit service writes at a time (a lease in Redis): a second one stands by instead
of splitting the events between two logs, and takes over when the first is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from llmos import subjects
from llmos.lease import Lease
from services.audit import metrics
from services.audit.records import Privacy, parse
from services.audit.store import AuditLog

log = logging.getLogger("llmos.audit.ingest")

CONSUMER = "audit"
FETCH_WAIT_S = 1.0
STANDBY_POLL_S = 1.0


def stream_sequence(message: Msg) -> int:
    return int(message.metadata.sequence.stream)


class Puller:
    """Batches from a pull consumer, collected by one subscription callback.

    nats-py's own `fetch` waits for each message with a task and a timeout of its own,
    which costs more than chaining and committing the record; this asks for a batch and
    waits once for all of it. A pull ends with its batch complete or a status message
    (404 nothing pending, 408 request expired).
    """

    def __init__(self, nc: NATS, stream: str, consumer: str) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._messages: list[Msg] = []
        self._wanted = 0
        self._done = asyncio.Event()

    async def start(self) -> None:
        await self._nc.subscribe(self._inbox, cb=self._on_message)

    async def _on_message(self, message: Msg) -> None:
        if message.headers and message.headers.get("Status") and not message.data:
            self._done.set()  # this pull is over (or a stale one from before ended)
            return
        self._messages.append(message)
        if len(self._messages) >= self._wanted:
            self._done.set()

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]:
        """Up to `batch` messages; raises TimeoutError when none came within `wait_s`."""
        self._wanted = batch
        self._done.clear()
        request = {"batch": batch, "expires": int(wait_s * 1e9)}
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), wait_s + 0.5)
        messages, self._messages = self._messages, []
        if not messages:
            raise TimeoutError
        return messages


class Ingest:
    """The consumer loop feeding one AuditLog."""

    def __init__(
        self,
        nc: NATS,
        audit_log: AuditLog,
        privacy: Privacy,
        batch: int,
        ack_wait_s: float,
        lease: Lease | None = None,
        alarm: metrics.LagAlarm | None = None,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._log = audit_log
        self._privacy = privacy
        self._batch = batch
        self._ack_wait_s = ack_wait_s
        self._lease = lease  # None: the only writer by construction (benchmarks)
        self._alarm = alarm or metrics.LagAlarm(None, float("inf"))
        self._puller: Puller | None = None

    async def subscribe(self) -> Puller:
        """The consumer (created or brought to this config) and a puller on it, once."""
        if self._puller is not None:
            return self._puller
        config = ConsumerConfig(
            durable_name=CONSUMER,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait_s,
            max_ack_pending=max(10_000, 2 * self._batch),
            filter_subject=subjects.ALL_AUDIT,
        )
        await self._js.add_consumer(subjects.AUDIT_STREAM, config)
        puller = Puller(self._nc, subjects.AUDIT_STREAM, CONSUMER)
        await puller.start()
        self._puller = puller
        return puller

    async def run(self) -> None:
        """Ingest until cancelled, while this instance holds the writer's lease; a failing
        batch is retried (it was not acknowledged)."""
        subscription = await self.subscribe()
        standby = False
        while True:
            if self._lease is not None and not await self._lease.hold():
                if not standby:
                    log.warning(
                        "another audit service writes the audit log; standing by",
                        extra={"holder": await self._lease.holder()},
                    )
                standby = True
                metrics.observe_idle()  # the writer reports the lag, not a stand-by
                await asyncio.sleep(STANDBY_POLL_S)
                continue
            if standby:
                log.info("this audit service now writes the audit log")
                standby = False
            try:
                messages = await subscription.fetch(self._batch, FETCH_WAIT_S)
            except TimeoutError:
                metrics.observe_idle()
                await self._alarm.update(0.0, 0)
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
            record = parse(message.data, source, functools.partial(stream_sequence, message))
            entries.append(self._privacy.entry(record, now))
        # before the commit: while commits fail, the lag shows it growing
        await self._alarm.update(*metrics.observe_batch(messages))
        try:
            await asyncio.to_thread(self._log.append, entries)
        except Exception:
            log.exception("audit batch not committed; JetStream will deliver it again")
            await asyncio.sleep(1.0)
            return
        metrics.RECORDS.inc(len(messages))
        for message in messages:
            await message.ack()
