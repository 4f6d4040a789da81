"""The trainer's side of a job: take a share of it from the scheduler, run it as child
processes, stop it when told, and report how it ended (`reports`).

Each attempt runs `services.trainer.program` in its own directory — directly for one
process, under `torchrun` for several (and for a gang spread over several trainers, node
0 picks the rendezvous port and the scheduler passes it to the other nodes). The child
gets the environment without LLMOS_* variables: it needs no credentials and sees none.

Stopping is cooperative so nothing is lost: the runner writes the attempt's `control`
file ("preempt", "cancel", "abort"), the program checkpoints after its current step and
exits. A job the program does not leave within the grace period is killed (its last
checkpoint stays). How the attempt ended is decided by `outcome`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmos import subjects, tracing
from llmos.auditing import AuditPublisher, job_record
from llmos.config import environment_without_llmos
from llmos.errors import LLMOSError
from llmos.modelstore import ModelStore
from llmos.ports import free_port
from llmos.training import attempt_key
from llmos.v1 import common_pb2, scheduler_pb2
from services.trainer import metrics
from services.trainer.artifacts import Inputs, fetch_inputs, register_result
from services.trainer.attempt import Attempt
from services.trainer.checkpoints import CheckpointSync
from services.trainer.outcome import EXIT_STOPPED, outcome
from services.trainer.reports import REPORT_TIMEOUT_S, Reporter

log = logging.getLogger("llmos.trainer")

ROOT = Path(__file__).resolve().parents[2]


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
        self._checkpoints = CheckpointSync(checkpoint_dir)
        self._models_dir = models_dir
        self._grace = stop_grace_s
        self._stores = stores  # tenant -> its view of storage (datasets, models)
        self._reporter = Reporter(nats, instance.instance_id)
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

    # -- assignments and control ---------------------------------------------------------

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
        """Ask an attempt's program to stop (it checkpoints first); killed after the grace."""
        if not attempt.state.request(action, reason):
            return
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

    # -- running the program ---------------------------------------------------------------

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

    def _write_job_file(self, attempt: Attempt, inputs: Inputs, threads: int) -> None:
        """What the program reads: the job, its inputs, and where to write."""
        job = attempt.job
        output = str(attempt.directory / "output") if attempt.node_rank == 0 else ""
        document = {
            "job_id": job.job_id,
            "attempt": job.attempt,
            "config": MessageToDict(job.spec.config),
            "text_file": inputs.text_file,
            "base_model_dir": inputs.base_model_dir,
            "output_dir": output,
            "checkpoint_dir": str(self._checkpoints.job_directory(job)),
            "threads": threads,
            "trainer_pid": os.getpid(),
        }
        (attempt.directory / "job.json").write_text(json.dumps(document))

    async def _run(self, attempt: Attempt, nodes: int, rendezvous: str) -> None:
        job = attempt.job
        attributes: dict[str, str | int] = {
            tracing.JOB_ID: job.job_id,
            "llmos.attempt": job.attempt,
            "llmos.node_rank": attempt.node_rank,
        }
        with tracing.start("trainer attempt", job.traceparent, attributes=attributes) as span:
            await self._attempt(attempt, nodes, rendezvous)
            span.set_attribute("llmos.outcome", attempt.outcome)

    async def _attempt(self, attempt: Attempt, nodes: int, rendezvous: str) -> None:
        job = attempt.job
        attempt.directory.mkdir(parents=True, exist_ok=True)
        threads = max(1, job.spec.resources.cpu_millicores // 1000)
        store = self._stores(job.tenant)
        try:
            inputs = await fetch_inputs(job, store, attempt.directory, self._models_dir)
            await self._checkpoints.restore(attempt, store)
        except LLMOSError as exc:
            attempt.state.failure = f"the job's inputs could not be fetched: {exc}"
            await self._finish(attempt, 1)
            return
        self._write_job_file(attempt, inputs, threads)
        if attempt.state.requested:  # stopped before it started
            await self._finish(attempt, EXIT_STOPPED)
            return
        log_file = (attempt.directory / "program.log").open("ab")
        scratch = attempt.directory / "tmp"  # torchrun's and the program's temporary files
        scratch.mkdir(exist_ok=True)
        try:
            attempt.process = await asyncio.create_subprocess_exec(
                *self._command(attempt, nodes, rendezvous),
                cwd=ROOT,
                env={
                    **_without_telemetry(environment_without_llmos()),
                    "OMP_NUM_THREADS": str(threads),
                    "TMPDIR": str(scratch),  # removed with the attempt's directory
                },
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,  # its own process group: torchrun and its ranks
            )
        except OSError as exc:
            attempt.state.failure = f"the training program could not start: {exc}"
            await self._finish(attempt, 1)
            return
        finally:
            log_file.close()
        log.info("job started", extra={"job": job.job_id, "attempt": job.attempt})
        unwanted = functools.partial(
            self._request, attempt, "abort", "the scheduler no longer wants it"
        )
        reporter = asyncio.create_task(self._reporter.progress(attempt, unwanted))
        keeper = asyncio.create_task(self._checkpoints.keep(attempt, store))
        assert attempt.process.stdout is not None
        async for line in attempt.process.stdout:
            attempt.state.read(line)
        code = await attempt.process.wait()
        reporter.cancel()
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await self._finish(attempt, code)

    async def _finish(self, attempt: Attempt, code: int) -> None:
        """Say how the attempt ended until a scheduler has heard it, then forget it."""
        job = attempt.job
        store = self._stores(job.tenant)
        try:  # the checkpoint a stop wrote is what the next attempt resumes from
            await self._checkpoints.store(attempt, store)
        except LLMOSError as exc:
            log.warning("last checkpoint not stored", extra={"job": job.job_id, "why": str(exc)})
        if attempt.state.should_register(code, attempt.node_rank):
            try:
                attempt.result = await register_result(job, store, attempt.directory / "output")
            except LLMOSError as exc:
                attempt.state.failure = (
                    f"training finished but its result could not be registered: {exc}"
                )
                code = 1
        end = outcome(attempt.state, code, attempt.result)
        attempt.outcome = common_pb2.JobState.Name(end.state)
        log.info(
            "job ended",
            extra={
                "job": job.job_id,
                "attempt": job.attempt,
                "state": common_pb2.JobState.Name(end.state),
            },
        )
        self._record(job, "job.attempt.end", end.audit_outcome, end.reason)
        metrics.forget(job.tenant, job.job_id)  # ended: not shown while the report waits
        await self._reporter.final(
            attempt.report(self._instance.instance_id, end.state, end.reason)
        )
        self._attempts.pop(attempt.key, None)
        shutil.rmtree(attempt.directory, ignore_errors=True)

    def _record(self, job: scheduler_pb2.Job, action: str, outcome: str, detail: str) -> None:
        if self._audit is None:
            return
        resource = f"job/{job.job_id}@{job.attempt}"
        self._audit.record(job_record("trainer", action, job, resource, outcome, detail))

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


def _without_telemetry(env: dict[str, str]) -> dict[str, str]:
    """The training program exports no spans (the trainer's `trainer attempt` covers it),
    so it gets none of the OTEL_* settings, which may carry an exporter's credentials."""
    return {key: value for key, value in env.items() if not key.startswith("OTEL_")}
