"""Checkpoints travel through storage, so a job resumes on any trainer, not only where
this disk is: restored before an attempt starts, uploaded as the program writes them.

The program writes `<checkpoint dir>/<job>/checkpoint.safetensors` (node 0's is the one kept); a
`.sha256` marker beside it names the blob in storage that holds the same bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from llmos.errors import DataLoss, LLMOSError
from llmos.model.names import CHECKPOINT
from llmos.modelstore import ModelStore
from llmos.v1 import scheduler_pb2
from services.trainer.attempt import Attempt

log = logging.getLogger("llmos.trainer")

SYNC_EVERY_S = 1.0


class CheckpointSync:
    """Moves one trainer's checkpoints between its disk and storage."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.directory = checkpoint_dir

    def job_directory(self, job: scheduler_pb2.Job) -> Path:
        """Where the program keeps the job's checkpoint."""
        return self.directory / job.job_id

    def _file(self, job: scheduler_pb2.Job) -> Path:
        return self.job_directory(job) / CHECKPOINT

    async def restore(self, attempt: Attempt, store: ModelStore) -> None:
        """Put the job's last checkpoint from storage where the program resumes from,
        unless this machine already holds that very checkpoint."""
        job = attempt.job
        attempt.checkpoint_blob, attempt.stored_step = job.checkpoint_blob, job.checkpoint_step
        if not job.checkpoint_blob:
            return
        target = self._file(job)
        marker = target.with_suffix(".sha256")
        if target.exists() and marker.exists() and marker.read_text() == job.checkpoint_blob:
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".download")
        if await store.download(job.tenant, job.checkpoint_blob, partial) != job.checkpoint_blob:
            raise DataLoss(f"the checkpoint of {job.job_id} did not match its digest")
        partial.replace(target)
        marker.write_text(job.checkpoint_blob)
        log.info("checkpoint restored from storage",
                 extra={"job": job.job_id, "step": job.checkpoint_step})  # fmt: skip

    async def store(self, attempt: Attempt, store: ModelStore) -> None:
        """Upload the newest checkpoint (node 0 holds it)."""
        if attempt.node_rank != 0 or attempt.state.checkpoint_step <= attempt.stored_step:
            return
        source = self._file(attempt.job)
        if not source.exists():
            return
        step = attempt.state.checkpoint_step
        snapshot = source.with_suffix(f".upload-{step}")
        snapshot.unlink(missing_ok=True)
        os.link(source, snapshot)  # the program may replace the file meanwhile
        try:
            sha256 = await store.upload(snapshot)
        finally:
            snapshot.unlink(missing_ok=True)
        source.with_suffix(".sha256").write_text(sha256)
        # the scheduler deletes the checkpoint this one replaces once it has recorded it:
        # until then the job may still resume from the old one
        attempt.checkpoint_blob, attempt.stored_step = sha256, step

    async def keep(self, attempt: Attempt, store: ModelStore) -> None:
        """While the job runs: store each new checkpoint (skipping ones overtaken)."""
        warned = False
        while True:
            try:
                await self.store(attempt, store)
            except LLMOSError as exc:
                if not warned:  # e.g. no storage: resuming then needs a shared directory
                    log.warning("checkpoints are not reaching storage",
                                extra={"job": attempt.job.job_id, "why": str(exc)})  # fmt: skip
                    warned = True
            await asyncio.sleep(SYNC_EVERY_S)
