"""The trainer's side of a job: take a share of it from the scheduler, run it as child
processes, stop it when told, and report every change until the scheduler has heard it.

Each attempt runs `services.trainer.program` in its own directory — directly for one
process, under `torchrun` for several (and for a gang spread over several trainers, node
0 picks the rendezvous port and the scheduler passes it to the other nodes). The child
gets the environment without LLMOS_* variables: it needs no credentials and sees none.

Stopping is cooperative so nothing is lost: the runner writes the attempt's `control`
file ("preempt", "cancel", "abort"), the program checkpoints after its current step and
exits. A job the program does not leave within the grace period is killed (its last
checkpoint stays).

Reports (RUNNING with progress, then the end) go to the schedulers by request/reply and
the final one is retried until one answers, so a scheduler that restarts mid-job still
learns how it ended. Until then the job stays listed in the trainer's heartbeats, which is
what keeps its lease alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError

from llmos import subjects
from llmos.auditing import AuditPublisher, job_record
from llmos.config import environment_without_llmos
from llmos.errors import DataLoss, LLMOSError, NotFound
from llmos.model.folder import has_model
from llmos.modelstore import ModelStore
from llmos.ports import free_port
from llmos.v1 import common_pb2, scheduler_pb2

log = logging.getLogger("llmos.trainer")

S = common_pb2.JobState
REPORT_TIMEOUT_S = 5.0
PROGRESS_EVERY_S = 1.0
ROOT = Path(__file__).resolve().parents[2]
EXIT_DONE, EXIT_STOPPED = 0, 3
CHECKPOINT = "checkpoint.pt"


#: how an attempt ended, as the audit log's outcome (a gRPC status name)
OUTCOMES = {
    S.JOB_STATE_SUCCEEDED: "OK",
    S.JOB_STATE_CANCELLED: "CANCELLED",
    S.JOB_STATE_PREEMPTED: "ABORTED",
}


def _model_name(job_name: str) -> str:
    """A registry name from a job's name (lowercase; other characters become -)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", job_name.lower()).strip("-.") or "trained"
    return name[:128]


def attempt_key(job_id: str, attempt: int) -> str:
    """How a running attempt is named in heartbeats."""
    return f"{job_id}@{attempt}"


@dataclass
class Attempt:
    """One job attempt running here."""

    job: scheduler_pb2.Job
    node_rank: int
    processes: int
    directory: Path
    process: asyncio.subprocess.Process | None = None
    requested: str = ""  # the control action asked for, if any
    requested_because: str = ""
    progress: common_pb2.TrainingProgress = field(default_factory=common_pb2.TrainingProgress)
    checkpoint_step: int = 0
    outcome: str = ""  # failure reason from the program
    result: str = ""  # the model version a successful job registered
    checkpoint_blob: str = ""  # the checkpoint in storage, and the step it holds
    stored_step: int = 0
    reported: bool = False  # the final report was answered

    @property
    def key(self) -> str:
        return attempt_key(self.job.job_id, self.job.attempt)


class JobRunner:
    """Runs the jobs the scheduler assigns to this trainer."""

    def __init__(
        self,
        nats: NATS,
        instance: common_pb2.ServiceInstance,
        work_dir: Path,
        checkpoint_dir: Path,
        models_dir: Path,
        stop_grace_s: float,
        stores: Callable[[str], ModelStore],
        audit: AuditPublisher | None = None,
    ) -> None:
        self._nats = nats
        self._audit = audit
        self._instance = instance
        self._work_dir = work_dir
        self._checkpoints = checkpoint_dir
        self._models_dir = models_dir
        self._grace = stop_grace_s
        self._stores = stores  # tenant -> its view of storage (datasets, models)
        self._attempts: dict[str, Attempt] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        instance_id = self._instance.instance_id
        self._subscriptions = [
            await self._nats.subscribe(subjects.trainer_assign(instance_id), cb=self._on_assign),
            await self._nats.subscribe(subjects.trainer_control(instance_id), cb=self._on_control),
        ]

    def status(self) -> scheduler_pb2.WorkerStatus:
        """Slots (processes) in use and the attempts running, for the heartbeat."""
        slots = self._instance.capacity.processes
        used = sum(a.processes for a in self._attempts.values())
        return scheduler_pb2.WorkerStatus(
            slots=slots, free_slots=max(slots - used, 0), running_jobs=sorted(self._attempts)
        )

    def running(self) -> list[str]:
        return [a.job.job_id for a in self._attempts.values() if not a.reported]

    async def _on_assign(self, msg: Msg) -> None:
        assignment = scheduler_pb2.JobAssignment.FromString(msg.data)
        reply = self._accept(assignment)
        await msg.respond(reply.SerializeToString())

    def _accept(self, assignment: scheduler_pb2.JobAssignment) -> scheduler_pb2.JobAssignmentReply:
        job = assignment.job
        key = attempt_key(job.job_id, job.attempt)
        placement = list(job.placement)
        if not 0 <= assignment.node_rank < len(placement) or (
            placement[assignment.node_rank].instance_id != self._instance.instance_id
        ):
            return scheduler_pb2.JobAssignmentReply(
                reason="the assignment does not place any process on this trainer"
            )
        if key in self._attempts:  # a retried assignment: already running
            return scheduler_pb2.JobAssignmentReply(accepted=True)
        processes = placement[assignment.node_rank].processes
        if self.status().free_slots < processes:
            return scheduler_pb2.JobAssignmentReply(
                reason=f"{processes} processes asked, {self.status().free_slots} free here"
            )
        rendezvous = assignment.rendezvous
        if len(placement) > 1 and assignment.node_rank == 0:
            host = self._instance.address.rpartition(":")[0] or "127.0.0.1"
            rendezvous = f"{host}:{free_port(host)}"
        directory = self._work_dir / key.replace("@", "-")
        attempt = Attempt(job, assignment.node_rank, processes, directory)
        self._attempts[key] = attempt
        self._record(
            job, "job.attempt.start", "OK", f"node {assignment.node_rank}: {processes} processes"
        )
        self._spawn_task(self._run(attempt, len(placement), rendezvous))
        return scheduler_pb2.JobAssignmentReply(accepted=True, rendezvous=rendezvous)

    async def _on_control(self, msg: Msg) -> None:
        control = scheduler_pb2.JobControl.FromString(msg.data)
        for attempt in list(self._attempts.values()):
            if attempt.job.job_id == control.job_id and (
                not control.attempt or control.attempt == attempt.job.attempt
            ):
                self._request(attempt, control.action, control.reason)

    def _request(self, attempt: Attempt, action: str, reason: str = "") -> None:
        if action not in ("preempt", "cancel", "abort") or attempt.requested:
            return
        attempt.requested = action
        attempt.requested_because = reason or action
        with contextlib.suppress(OSError):
            (attempt.directory / "control").write_text(action)
        log.info("stopping a job", extra={"job": attempt.job.job_id, "action": action})
        if attempt.process is not None:
            self._spawn_task(self._kill_after_grace(attempt))

    async def _kill_after_grace(self, attempt: Attempt) -> None:
        process = attempt.process
        assert process is not None
        try:
            await asyncio.wait_for(process.wait(), self._grace)
        except TimeoutError:
            log.warning("a job did not stop in time: killed", extra={"job": attempt.job.job_id})
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def _command(self, attempt: Attempt, nodes: int, rendezvous: str) -> list[str]:
        program = ["-m", "services.trainer.program", str(attempt.directory)]
        if nodes == 1 and attempt.processes == 1:
            return [sys.executable, *program]
        host, _, port = (rendezvous or f"127.0.0.1:{free_port()}").rpartition(":")
        return [
            sys.executable, "-m", "torch.distributed.run",
            f"--nnodes={nodes}", f"--node-rank={attempt.node_rank}",
            f"--nproc-per-node={attempt.processes}",
            f"--master-addr={host}", f"--master-port={port}",
            *program,
        ]  # fmt: skip

    async def _inputs(self, attempt: Attempt, config: dict[str, Any]) -> str:
        """Fetch the job's dataset (into its directory) and base model (into the models
        directory, if not there yet); returns the dataset's path or ""."""
        store = self._stores(attempt.job.tenant)
        text_file = ""
        if config.get("dataset"):
            dataset = await store.dataset(str(config["dataset"]))
            target = attempt.directory / "dataset.txt"
            if await store.download(attempt.job.tenant, dataset.sha256, target) != dataset.sha256:
                raise DataLoss(f"dataset {dataset.name!r} did not match its digest")
            text_file = str(target)
        await self._restore_checkpoint(attempt, store)
        base = str(config.get("base_model", ""))
        if base and not has_model(self._models_dir / base):
            self._models_dir.mkdir(parents=True, exist_ok=True)
            if not await store.fetch(base, self._models_dir):
                raise NotFound(f"model {base!r} is not in the registry")
        return text_file

    def _checkpoint_file(self, job: scheduler_pb2.Job) -> Path:
        return self._checkpoints / job.job_id / CHECKPOINT

    async def _restore_checkpoint(self, attempt: Attempt, store: ModelStore) -> None:
        """Put the job's last checkpoint from storage where the program resumes from,
        unless this machine already holds that very checkpoint."""
        job = attempt.job
        attempt.checkpoint_blob, attempt.stored_step = job.checkpoint_blob, job.checkpoint_step
        if not job.checkpoint_blob:
            return
        target = self._checkpoint_file(job)
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

    async def _store_checkpoint(self, attempt: Attempt) -> None:
        """Upload the newest checkpoint (node 0 holds it), so the job resumes anywhere, not
        only where this disk is."""
        if attempt.node_rank != 0 or attempt.checkpoint_step <= attempt.stored_step:
            return
        source = self._checkpoint_file(attempt.job)
        if not source.exists():
            return
        step = attempt.checkpoint_step
        snapshot = source.with_suffix(f".upload-{step}")
        snapshot.unlink(missing_ok=True)
        os.link(source, snapshot)  # the program may replace the file meanwhile
        store = self._stores(attempt.job.tenant)
        try:
            sha256 = await store.upload(snapshot)
        finally:
            snapshot.unlink(missing_ok=True)
        source.with_suffix(".sha256").write_text(sha256)
        # the scheduler deletes the checkpoint this one replaces once it has recorded it:
        # until then the job may still resume from the old one
        attempt.checkpoint_blob, attempt.stored_step = sha256, step

    async def _keep_checkpoints(self, attempt: Attempt) -> None:
        """While the job runs: store each new checkpoint (skipping ones overtaken)."""
        warned = False
        while True:
            try:
                await self._store_checkpoint(attempt)
            except LLMOSError as exc:
                if not warned:  # e.g. no storage: resuming then needs a shared directory
                    log.warning("checkpoints are not reaching storage",
                                extra={"job": attempt.job.job_id, "why": str(exc)})  # fmt: skip
                    warned = True
            await asyncio.sleep(PROGRESS_EVERY_S)

    async def _run(self, attempt: Attempt, nodes: int, rendezvous: str) -> None:
        job = attempt.job
        attempt.directory.mkdir(parents=True, exist_ok=True)
        threads = max(1, job.spec.resources.cpu_millicores // 1000)
        config = MessageToDict(job.spec.config)
        try:
            text_file = await self._inputs(attempt, config)
        except LLMOSError as exc:
            attempt.outcome = f"the job's inputs could not be fetched: {exc}"
            await self._finish(attempt, 1)
            return
        (attempt.directory / "job.json").write_text(
            json.dumps(
                {
                    "job_id": job.job_id,
                    "attempt": job.attempt,
                    "config": config,
                    "text_file": text_file,
                    "output_dir": str(attempt.directory / "output")
                    if attempt.node_rank == 0
                    else "",
                    "checkpoint_dir": str(self._checkpoints / job.job_id),
                    "models_dir": str(self._models_dir),
                    "threads": threads,
                    "trainer_pid": os.getpid(),
                }
            )
        )
        if attempt.requested:  # stopped before it started
            await self._finish(attempt, EXIT_STOPPED)
            return
        log_file = (attempt.directory / "program.log").open("ab")
        try:
            attempt.process = await asyncio.create_subprocess_exec(
                *self._command(attempt, nodes, rendezvous),
                cwd=ROOT,
                env={**environment_without_llmos(), "OMP_NUM_THREADS": str(threads)},
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,  # its own process group: torchrun and its ranks
            )
        except OSError as exc:
            attempt.outcome = f"the training program could not start: {exc}"
            await self._finish(attempt, 1)
            return
        finally:
            log_file.close()
        log.info("job started", extra={"job": job.job_id, "attempt": job.attempt})
        reporter = asyncio.create_task(self._report_progress(attempt))
        keeper = asyncio.create_task(self._keep_checkpoints(attempt))
        assert attempt.process.stdout is not None
        async for line in attempt.process.stdout:
            self._read_line(attempt, line)
        code = await attempt.process.wait()
        reporter.cancel()
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await self._finish(attempt, code)

    def _read_line(self, attempt: Attempt, line: bytes) -> None:
        try:
            said = json.loads(line)
        except ValueError:
            return
        event = said.get("event")
        if event == "progress":
            attempt.progress = common_pb2.TrainingProgress(
                **{k: said[k] for k in ("step", "total_steps", "loss", "val_loss",
                                        "tokens_per_s", "eta_s")}
            )  # fmt: skip
        elif event in ("checkpoint", "resumed"):
            attempt.checkpoint_step = int(said["step"])
        elif event == "stopped":
            attempt.checkpoint_step = int(said.get("checkpoint_step", attempt.checkpoint_step))
        elif event == "failed":
            attempt.outcome = str(said.get("reason", "the training program failed"))

    async def _report_progress(self, attempt: Attempt) -> None:
        """RUNNING, then the latest progress about once a second (dropped if unanswered:
        the next one carries newer news)."""
        sent: tuple[int, int, int] | None = None
        while True:
            current = (attempt.progress.step, attempt.checkpoint_step, attempt.stored_step)
            if current != sent:
                report = self._report(attempt, S.JOB_STATE_RUNNING, "running")
                with contextlib.suppress(TimeoutError, NoRespondersError):
                    reply = await self._send(report)
                    sent = current
                    if reply.stop:
                        self._request(attempt, "abort", "the scheduler no longer wants it")
            await asyncio.sleep(PROGRESS_EVERY_S)

    async def _finish(self, attempt: Attempt, code: int) -> None:
        """Say how the attempt ended until a scheduler has heard it, then forget it."""
        job = attempt.job
        try:  # the checkpoint a stop wrote is what the next attempt resumes from
            await self._store_checkpoint(attempt)
        except LLMOSError as exc:
            log.warning("last checkpoint not stored", extra={"job": job.job_id, "why": str(exc)})
        if code == EXIT_DONE and not attempt.requested and attempt.node_rank == 0:
            try:
                attempt.result = await self._register(attempt)
            except LLMOSError as exc:
                attempt.outcome = f"training finished but its result could not be registered: {exc}"
                code = 1
        if code == EXIT_DONE and not attempt.requested:
            state, reason = S.JOB_STATE_SUCCEEDED, "training finished"
            if attempt.result:
                reason = f"training finished: registered {attempt.result}"
        elif attempt.requested == "cancel":
            state, reason = S.JOB_STATE_CANCELLED, "cancelled"
        elif attempt.requested:
            state = S.JOB_STATE_PREEMPTED
            reason = f"{attempt.requested_because}; checkpointed at step {attempt.checkpoint_step}"
        else:
            state = S.JOB_STATE_FAILED
            reason = attempt.outcome or f"the training program exited with status {code}"
        log.info(
            "job ended",
            extra={"job": job.job_id, "attempt": job.attempt, "state": S.Name(state)},
        )
        self._record(job, "job.attempt.end", OUTCOMES.get(state, "INTERNAL"), reason)
        report = self._report(attempt, state, reason)
        delay = 0.2
        while True:
            try:
                await self._send(report)
                break
            except (TimeoutError, NoRespondersError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        attempt.reported = True
        self._attempts.pop(attempt.key, None)
        shutil.rmtree(attempt.directory, ignore_errors=True)

    def _record(self, job: scheduler_pb2.Job, action: str, outcome: str, detail: str) -> None:
        if self._audit is None:
            return
        resource = f"job/{job.job_id}@{job.attempt}"
        self._audit.record(job_record("trainer", action, job, resource, outcome, detail))

    async def _register(self, attempt: Attempt) -> str:
        """The trained model as a new version in the job's tenant, with its lineage."""
        job = attempt.job
        config = MessageToDict(job.spec.config)
        store = self._stores(job.tenant)
        name = str(config.get("output_model") or _model_name(job.spec.name))
        lineage: dict[str, Any] = {
            "job": job.job_id,
            "config": {k: v for k, v in config.items() if k != "text"},
        }
        base = str(config.get("base_model", ""))
        if base:
            parent = await store.version(base)
            lineage["parent"] = f"{base}@{parent.version}" if parent else base
        if config.get("dataset"):
            dataset = await store.dataset(str(config["dataset"]))
            lineage["dataset"] = {"name": dataset.name, "sha256": dataset.sha256}
        method = "full" if base else "from scratch"
        if config.get("method") == "lora":
            method = f"LoRA rank {int(config.get('lora_rank', 8))}, merged into the weights"
        metadata = {
            "method": method,
            "tokenizer": "tokenizer.json" if base else "bytes (no tokenizer file)",
        }
        version = await store.register(name, attempt.directory / "output", lineage, metadata)
        return f"{name}@{version}"

    def _report(self, attempt: Attempt, state: int, reason: str) -> scheduler_pb2.JobReport:
        return scheduler_pb2.JobReport(
            job_id=attempt.job.job_id,
            attempt=attempt.job.attempt,
            instance_id=self._instance.instance_id,
            state=state,  # type: ignore[arg-type]
            reason=reason,
            # with a blob: the step that blob holds (storage may lag the local checkpoint)
            checkpoint_step=attempt.stored_step
            if attempt.checkpoint_blob
            else attempt.checkpoint_step,
            progress=attempt.progress,
            result=attempt.result,
            checkpoint_blob=attempt.checkpoint_blob,
        )

    async def _send(self, report: scheduler_pb2.JobReport) -> scheduler_pb2.JobReportReply:
        msg = await self._nats.request(
            subjects.JOB_REPORT, report.SerializeToString(), timeout=REPORT_TIMEOUT_S
        )
        return scheduler_pb2.JobReportReply.FromString(msg.data)

    def _spawn_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """On shutdown: preempt every job (it checkpoints first) and report it, so the
        scheduler requeues it at once; if no scheduler answers within a few seconds the
        job's lease lapses instead, with the same outcome."""
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        for attempt in list(self._attempts.values()):
            self._request(attempt, "preempt", "its trainer is shutting down")
        exits = [
            asyncio.ensure_future(a.process.wait()) for a in self._attempts.values() if a.process
        ]
        if exits:
            await asyncio.wait(exits, timeout=self._grace)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=REPORT_TIMEOUT_S)
        for task in list(self._tasks):
            task.cancel()
