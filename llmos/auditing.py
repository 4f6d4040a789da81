"""Publishing audit records without slowing the action they describe, and without losing
them when NATS blinks.

Records go into a bounded in-memory buffer; one background task publishes them to
JetStream (`llmos.audit.<source>`), a window at a time, each with its id as
`Nats-Msg-Id`, so a retried publish is stored once. While NATS is unreachable the task
retries with backoff and the buffer holds what arrives; if the buffer fills, the oldest
records are dropped and the loss is logged with a count — never silently. At shutdown
the buffer is flushed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import uuid

from nats.js import JetStreamContext

from llmos import subjects
from llmos.v1 import audit_pb2, scheduler_pb2

log = logging.getLogger("llmos.audit")

BUFFER = 100_000
#: records published at once (JetStream acknowledges each; waiting for one at a time
#: would cap a busy gateway at a few thousand records a second)
WINDOW = 256
FLUSH_TIMEOUT_S = 5.0


def new_record(source: str, action: str) -> audit_pb2.AuditRecord:
    """An audit record with a unique id and the current time."""
    record = audit_pb2.AuditRecord(id=uuid.uuid4().hex, source=source, action=action)
    record.time.GetCurrentTime()
    return record


def job_record(
    source: str, action: str, job: scheduler_pb2.Job, resource: str, outcome: str, detail: str
) -> audit_pb2.AuditRecord:
    """An audit record of what happened to a training job: on behalf of its owner, in its
    tenant (the scheduler records transitions, trainers their attempts)."""
    record = new_record(source, action)
    record.tenant = job.tenant
    record.principal = job.owner
    record.resource = resource
    record.outcome = outcome
    record.detail = detail
    return record


class AuditPublisher:
    """Buffered, retrying, deduplicated publishing of audit records."""

    def __init__(self, js: JetStreamContext, source: str, buffer: int = BUFFER) -> None:
        self._js = js
        self._subject = subjects.audit(source)
        self._pending: collections.deque[audit_pb2.AuditRecord] = collections.deque()
        self._buffer = buffer
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.published = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-publisher")

    def record(self, record: audit_pb2.AuditRecord) -> None:
        """Queue `record` for publishing (never blocks the caller)."""
        if len(self._pending) >= self._buffer:
            self._pending.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "audit buffer full: dropping the oldest records",
                    extra={"dropped": self.dropped, "buffer": self._buffer},
                )
        self._pending.append(record)
        self._wakeup.set()

    async def close(self) -> None:
        """Publish what is buffered (bounded by FLUSH_TIMEOUT_S), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), FLUSH_TIMEOUT_S)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._pending:
            log.error(
                "audit records not published at shutdown", extra={"count": len(self._pending)}
            )

    async def _drained(self) -> None:
        while self._pending:
            self._wakeup.set()
            await asyncio.sleep(0.01)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                window = list(itertools.islice(self._pending, WINDOW))
                results = await asyncio.gather(
                    *(self._publish(record) for record in window), return_exceptions=True
                )
                sent = {id(r) for r, result in zip(window, results, strict=True) if result is None}
                self.published += len(sent)
                if len(sent) == len(window):
                    while self._pending and id(self._pending[0]) in sent:
                        self._pending.popleft()
                    backoff = 0.1
                    continue
                self._pending = collections.deque(r for r in self._pending if id(r) not in sent)
                error = next(r for r in results if r is not None)
                log.warning(
                    "audit publish failed; retrying",
                    extra={"error": str(error), "buffered": len(self._pending)},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _publish(self, record: audit_pb2.AuditRecord) -> None:
        await self._js.publish(
            self._subject,
            record.SerializeToString(),
            timeout=2.0,
            headers={"Nats-Msg-Id": record.id},
        )
