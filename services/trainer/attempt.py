"""One job attempt running on this trainer: its share of the job, its program, what is
known of its state, and where its checkpoint stands in storage."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from llmos.training import attempt_key
from llmos.v1 import scheduler_pb2
from services.trainer.outcome import AttemptState


@dataclass
class Attempt:
    """One job attempt running here."""

    job: scheduler_pb2.Job
    node_rank: int
    processes: int
    directory: Path
    process: asyncio.subprocess.Process | None = None
    state: AttemptState = field(default_factory=AttemptState)
    result: str = ""  # the model version a successful job registered
    checkpoint_blob: str = ""  # the checkpoint in storage, and the step it holds
    stored_step: int = 0
    outcome: str = ""  # how it ended (a JobState name), once it has

    @property
    def key(self) -> str:
        return attempt_key(self.job.job_id, self.job.attempt)

    def report(self, instance_id: str, state: int, reason: str) -> scheduler_pb2.JobReport:
        """What to tell the scheduler about this attempt now."""
        return scheduler_pb2.JobReport(
            job_id=self.job.job_id,
            attempt=self.job.attempt,
            instance_id=instance_id,
            state=state,  # type: ignore[arg-type]
            reason=reason,
            # with a blob: the step that blob holds (storage may lag the local checkpoint)
            checkpoint_step=self.stored_step
            if self.checkpoint_blob
            else self.state.checkpoint_step,
            progress=self.state.progress,
            result=self.result,
            checkpoint_blob=self.checkpoint_blob,
        )
