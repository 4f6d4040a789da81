"""How a training attempt ended, decided from what is known when its program exits.

The trainer asks the program to stop by writing an action ("preempt", "cancel",
"abort") to the attempt's control file; the program checkpoints and exits with
`EXIT_STOPPED`, or finishes with `EXIT_DONE`, or fails with anything else (saying why on
its output first). Node 0 registers a finished job's weights as a model version, and a
failure to do so fails the job. These rules turn all of that into the job's end state,
the sentence the job shows, and the audit outcome.

Pure logic: no processes, no NATS, no files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from llmos.v1 import common_pb2

S = common_pb2.JobState
EXIT_DONE, EXIT_STOPPED = 0, 3
ACTIONS = ("preempt", "cancel", "abort")

#: how an attempt ended, as the audit log's outcome (a gRPC status name)
AUDIT_OUTCOMES: dict[int, str] = {
    S.JOB_STATE_SUCCEEDED: "OK",
    S.JOB_STATE_CANCELLED: "CANCELLED",
    S.JOB_STATE_PREEMPTED: "ABORTED",
}


def model_name(job_name: str) -> str:
    """A registry name from a job's name (lowercase; other characters become -)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", job_name.lower()).strip("-.") or "trained"
    return name[:128]


@dataclass
class AttemptState:
    """What the trainer knows of an attempt while it runs: the stop asked for, and what
    the program said on its output."""

    requested: str = ""  # the control action asked for, if any
    requested_because: str = ""
    progress: common_pb2.TrainingProgress = field(default_factory=common_pb2.TrainingProgress)
    checkpoint_step: int = 0
    failure: str = ""  # failure reason from the program (or from fetching its inputs)

    def request(self, action: str, reason: str = "") -> bool:
        """Ask the attempt to stop; False if the action is unknown or a stop was already
        asked for (the first one stands)."""
        if action not in ACTIONS or self.requested:
            return False
        self.requested = action
        self.requested_because = reason or action
        return True

    def read(self, line: bytes) -> None:
        """One line of the program's output: its events are JSON objects."""
        try:
            said: Any = json.loads(line)
        except ValueError:
            return
        if not isinstance(said, dict):
            return
        event = said.get("event")
        if event == "progress":
            fields = ("step", "total_steps", "loss", "val_loss", "tokens_per_s", "eta_s")
            self.progress = common_pb2.TrainingProgress(**{k: said[k] for k in fields})
        elif event in ("checkpoint", "resumed"):
            self.checkpoint_step = int(said["step"])
        elif event == "stopped":
            self.checkpoint_step = int(said.get("checkpoint_step", self.checkpoint_step))
        elif event == "failed":
            self.failure = str(said.get("reason", "the training program failed"))

    def should_register(self, code: int, node_rank: int) -> bool:
        """Whether this node registers the result: the program finished on its own, and
        this is node 0 (which holds the output)."""
        return code == EXIT_DONE and not self.requested and node_rank == 0


@dataclass(frozen=True)
class Outcome:
    """The attempt's end: the job state to report, its sentence, the audit outcome."""

    state: int
    reason: str

    @property
    def audit_outcome(self) -> str:
        return AUDIT_OUTCOMES.get(self.state, "INTERNAL")


def outcome(state: AttemptState, code: int, result: str = "") -> Outcome:
    """The end of an attempt whose program exited with `code` (`result`: the model version
    it registered, if any)."""
    if code == EXIT_DONE and not state.requested:
        reason = f"training finished: registered {result}" if result else "training finished"
        return Outcome(S.JOB_STATE_SUCCEEDED, reason)
    if state.requested == "cancel":
        return Outcome(S.JOB_STATE_CANCELLED, "cancelled")
    if state.requested:
        return Outcome(
            S.JOB_STATE_PREEMPTED,
            f"{state.requested_because}; checkpointed at step {state.checkpoint_step}",
        )
    reason = state.failure or f"the training program exited with status {code}"
    return Outcome(S.JOB_STATE_FAILED, reason)
