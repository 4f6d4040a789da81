"""Telling the schedulers how attempts go: RUNNING with progress about once a second,
then the end, repeated until a scheduler has it — so a scheduler that restarts mid-job
still learns how it ended. Until then the job stays listed in the trainer's heartbeats,
which is what keeps its lease alive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

from llmos import subjects
from llmos.v1 import common_pb2, scheduler_pb2
from services.trainer import metrics
from services.trainer.attempt import Attempt

S = common_pb2.JobState
REPORT_TIMEOUT_S = 5.0
PROGRESS_EVERY_S = 1.0


class Reporter:
    """Sends one trainer's job reports to the schedulers (request/reply)."""

    def __init__(self, nats: NATS, instance_id: str) -> None:
        self._nats = nats
        self._instance_id = instance_id

    async def send(self, report: scheduler_pb2.JobReport) -> scheduler_pb2.JobReportReply:
        """One report; raises TimeoutError or NoRespondersError if no scheduler answers."""
        msg = await self._nats.request(
            subjects.job_report(self._instance_id),
            report.SerializeToString(),
            timeout=REPORT_TIMEOUT_S,
        )
        return scheduler_pb2.JobReportReply.FromString(msg.data)

    async def progress(self, attempt: Attempt, unwanted: Callable[[], None]) -> None:
        """RUNNING, then the latest progress whenever it changed (a report no one answers
        is dropped: the next one carries newer news); `unwanted` when a scheduler says the
        attempt is no longer wanted."""
        sent: tuple[int, int, int] | None = None
        while True:
            current = (attempt.state.progress.step, attempt.state.checkpoint_step,
                       attempt.stored_step)  # fmt: skip
            if current != sent:
                job = attempt.job
                metrics.observe_progress(job.tenant, job.job_id, attempt.state.progress)
                report = attempt.report(self._instance_id, S.JOB_STATE_RUNNING, "running")
                with contextlib.suppress(TimeoutError, NoRespondersError):
                    reply = await self.send(report)
                    sent = current
                    if reply.stop:
                        unwanted()
            await asyncio.sleep(PROGRESS_EVERY_S)

    async def final(self, report: scheduler_pb2.JobReport) -> None:
        """The end of an attempt, repeated with backoff until a scheduler has it."""
        delay = 0.2
        while True:
            try:
                await self.send(report)
                return
            except (TimeoutError, NoRespondersError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
