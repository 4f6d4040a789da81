"""The scheduler's live table of workers, fed by their heartbeats over NATS.

Each worker and trainer publishes its status every heartbeat (capacity, sampled use,
slots, loaded models). One that misses three heartbeats is declared dead: it leaves the
table, is logged, and (with leases) its work is handed back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmos import subjects
from llmos.v1 import scheduler_pb2

log = logging.getLogger("llmos.scheduler.workers")

MISSED_HEARTBEATS = 3


class WorkerTable:
    """instance id -> latest status, for workers that are alive."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._workers: dict[str, tuple[float, scheduler_pb2.WorkerStatus]] = {}
        self._subscription: Subscription | None = None

    async def follow(self, nc: NATS) -> None:
        """Start listening to heartbeats."""

        async def on_heartbeat(msg: Msg) -> None:
            self.observe(scheduler_pb2.WorkerStatus.FromString(msg.data))

        self._subscription = await nc.subscribe(subjects.ALL_HEARTBEATS, cb=on_heartbeat)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    def observe(self, status: scheduler_pb2.WorkerStatus) -> None:
        if status.instance.instance_id not in self._workers:
            log.info(
                "worker joined",
                extra={"instance": status.instance.instance_id, "service": status.instance.service},
            )
        self._workers[status.instance.instance_id] = (self._clock(), status)

    def alive(self) -> list[scheduler_pb2.WorkerStatus]:
        """Workers heard from recently enough; the others are declared dead and dropped."""
        now = self._clock()
        for instance_id, (seen, status) in list(self._workers.items()):
            limit = MISSED_HEARTBEATS * max(status.heartbeat_interval_s, 0.1)
            if now - seen > limit:
                del self._workers[instance_id]
                log.warning(
                    "worker declared dead: no heartbeat for %.1fs",
                    now - seen,
                    extra={"instance": instance_id, "service": status.instance.service},
                )
        return sorted(
            (status for _, status in self._workers.values()),
            key=lambda s: (s.instance.service, s.instance.instance_id),
        )
