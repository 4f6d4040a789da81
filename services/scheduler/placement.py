"""Which worker takes a request: model affinity first, then the least loaded.

Pure logic over a snapshot of worker state; the scheduler keeps the snapshot fresh
from heartbeats and its own dispatch decisions.
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


@dataclass(frozen=True)
class Placement:
    worker: WorkerView
    needs_load: bool  # the worker must load the model first


def place(workers: Iterable[WorkerView], model: str) -> Placement | None:
    """The least-loaded worker with a free slot that has `model` loaded; failing that,
    the least-loaded worker with a free slot (which is asked to load it); None if no
    worker has a free slot."""
    best_with: WorkerView | None = None
    best_any: WorkerView | None = None
    for worker in workers:
        if worker.free <= 0:
            continue
        if model in worker.models and (best_with is None or worker.load() < best_with.load()):
            best_with = worker
        if best_any is None or worker.load() < best_any.load():
            best_any = worker
    if best_with is not None:
        return Placement(best_with, needs_load=False)
    if best_any is not None:
        return Placement(best_any, needs_load=True)
    return None
