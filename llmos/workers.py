"""The live table of workers, kept from their heartbeats: the one record of which worker
serves what.

Each inference worker and trainer publishes its status every heartbeat, and at once when
what it serves changes (capacity, sampled use, slots, loaded and loadable models,
running jobs) on `llmos.heartbeat.>`. The scheduler keeps a table of them to decide
(placement, loads, leases); the gateway keeps one to answer ListModels. One that misses
three heartbeats is declared dead: it leaves the table, is logged, and (through the
scheduler's leases) its work is handed back.

The table has no clock of its own: callers pass the time (`follow` feeds it from NATS).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmos import subjects
from llmos.v1 import scheduler_pb2

log = logging.getLogger("llmos.workers")

MISSED_HEARTBEATS = 3
INFERENCE_WORKER = "inference-worker"
TRAINER = "trainer"


class WorkerTable:
    """instance id -> latest status, for workers that are alive."""

    def __init__(self) -> None:
        self._workers: dict[str, tuple[float, scheduler_pb2.WorkerStatus]] = {}

    def observe(self, status: scheduler_pb2.WorkerStatus, now: float) -> None:
        """A heartbeat arrived."""
        if status.instance.instance_id not in self._workers:
            log.info(
                "worker joined",
                extra={"instance": status.instance.instance_id, "service": status.instance.service},
            )
        self._workers[status.instance.instance_id] = (now, status)

    def loaded(self, instance_id: str, models: Iterable[str]) -> None:
        """A worker said (answering a load) which models it serves now: believe it before
        its next heartbeat, so work for a model just deployed is not refused meanwhile."""
        entry = self._workers.get(instance_id)
        if entry is not None:
            del entry[1].loaded_models[:]
            entry[1].loaded_models.extend(models)

    def alive(self, now: float, service: str | None = None) -> list[scheduler_pb2.WorkerStatus]:
        """Workers (of `service`, if given) heard from recently enough; the others are
        declared dead and dropped."""
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
            (
                status
                for _, status in self._workers.values()
                if service is None or status.instance.service == service
            ),
            key=lambda s: (s.instance.service, s.instance.instance_id),
        )

    def address(self, instance_id: str) -> str:
        """Where a worker's gRPC API listens ("" if it is not in the table)."""
        entry = self._workers.get(instance_id)
        return entry[1].instance.address if entry else ""

    async def follow(self, nc: NATS, clock: Callable[[], float] = time.monotonic) -> Subscription:
        """Feed the table with every heartbeat from now on; the caller unsubscribes."""

        async def on_heartbeat(msg: Msg) -> None:
            status = scheduler_pb2.WorkerStatus.FromString(msg.data)
            instance = status.instance
            # a user may publish only its own service's heartbeat subject: the payload
            # must be about the instance and service that subject names
            try:
                expected = subjects.heartbeat(instance.service, instance.instance_id)
            except ValueError:
                expected = ""
            if msg.subject != expected:
                log.warning(
                    "heartbeat ignored: its subject names another instance",
                    extra={"subject": msg.subject, "instance": instance.instance_id},
                )
                return
            self.observe(status, clock())

        return await nc.subscribe(subjects.ALL_HEARTBEATS, cb=on_heartbeat)
