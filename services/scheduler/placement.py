"""Which worker takes a request: one that has the model loaded, the least loaded first.

Pure logic over a snapshot of worker state; the scheduler keeps the snapshot fresh
from heartbeats and its own dispatch decisions. (Which worker *loads* a model is the
generation board's decision, `services.scheduler.generations`.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class WorkerView:
    """What placement needs to know about one worker."""

    worker_id: str
    slots: int
    busy: int = 0
    queued: int = 0
    models: set[str] = field(default_factory=set)

    @property
    def free(self) -> int:
        return self.slots - self.busy

    def load(self) -> float:
        """Fraction of capacity in use, counting its own queue as extra demand."""
        return (self.busy + self.queued) / self.slots if self.slots else float("inf")


def place(workers: Iterable[WorkerView], model: str) -> WorkerView | None:
    """The least-loaded worker with a free slot that has `model` loaded; None if none has."""
    candidates = [w for w in workers if w.free > 0 and model in w.models]
    return min(candidates, key=WorkerView.load, default=None)
