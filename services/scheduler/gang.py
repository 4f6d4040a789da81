"""Placing training jobs: all of a job's processes at once or none (gang reservation),
capacity kept aside by reservations, and which lower-priority jobs to preempt.

A job needs `processes` processes, each with the same resources. A trainer offers its
capacity (CPU, memory, GPUs, GPU memory, process slots) minus what placed jobs hold. A
placement puts the whole gang on as few trainers as possible (one if any can take it all,
so it runs without cross-node traffic), or it is not made at all: a half-placed gang would
hold capacity while waiting for the rest, which is how clusters deadlock.

Reservations (shared with inference: `capacity.Reservation`) count process slots here: a
guaranteed reservation holds back whatever part of its slots its beneficiaries are not
using from everyone else; a headroom reservation keeps that many slots free.

Pure logic, no I/O: the dispatcher feeds it the jobs in Redis and the trainers alive.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from llmos.priority import PriorityClass
from llmos.v1 import common_pb2
from services.scheduler.capacity import Reservation

DIMENSIONS = ("cpu_millicores", "memory_bytes", "gpus", "gpu_memory_bytes")


@dataclass(frozen=True)
class GangRequest:
    """What one job asks for."""

    job_id: str
    tenant: str
    priority: PriorityClass
    per_process: common_pb2.Resources
    processes: int


@dataclass(frozen=True)
class Holding:
    """A job that holds capacity now (scheduled or running)."""

    request: GangRequest
    placement: tuple[tuple[str, int], ...]  # (trainer instance id, processes)
    started: float = 0.0


def _amount(resources: common_pb2.Resources, name: str) -> int:
    return int(getattr(resources, name))


class TrainerPool:
    """Free capacity per trainer after the holdings, and reservation accounting."""

    def __init__(
        self,
        trainers: dict[str, common_pb2.Resources],
        holdings: Iterable[Holding],
        reservations: Sequence[Reservation] = (),
    ) -> None:
        self.capacity = dict(trainers)
        self.reservations = list(reservations)
        self.holdings = list(holdings)
        self.free: dict[str, dict[str, int]] = {
            tid: {**{d: _amount(cap, d) for d in DIMENSIONS}, "processes": cap.processes}
            for tid, cap in trainers.items()
        }
        for holding in self.holdings:
            self._take(holding.request, holding.placement)

    def _take(self, request: GangRequest, placement: Iterable[tuple[str, int]]) -> None:
        for tid, n in placement:
            free = self.free.get(tid)
            if free is None:  # a trainer that is gone: its jobs are being handed back
                continue
            free["processes"] -= n
            for d in DIMENSIONS:
                free[d] -= _amount(request.per_process, d) * n

    def fits_on(self, trainer_id: str, request: GangRequest) -> int:
        """How many of the request's processes this trainer can take now."""
        free = self.free[trainer_id]
        count = free["processes"]
        for d in DIMENSIONS:
            need = _amount(request.per_process, d)
            if need > 0:
                count = min(count, free[d] // need)
        return max(count, 0)

    def held_back(self, request: GangRequest) -> int:
        """Process slots reservations keep from this request's tenant and class."""
        held = 0
        for reservation in self.reservations:
            if reservation.covers(request.tenant, request.priority):
                continue
            if reservation.headroom:
                held += reservation.slots
            else:
                used = sum(
                    n
                    for h in self.holdings
                    if reservation.covers(h.request.tenant, h.request.priority)
                    for _, n in h.placement
                )
                held += max(0, reservation.slots - used)
        return held

    def place(self, request: GangRequest) -> tuple[tuple[str, int], ...] | None:
        """Where the whole gang fits now, on as few trainers as possible; None if it does
        not fit (after reservations), in which case nothing is taken."""
        processes = max(request.processes, 1)
        free_slots = sum(max(f["processes"], 0) for f in self.free.values())
        if free_slots - self.held_back(request) < processes:
            return None
        room = {tid: self.fits_on(tid, request) for tid in sorted(self.free)}
        whole = [tid for tid, n in room.items() if n >= processes]
        if whole:  # best fit: the trainer left with the fewest free slots afterwards
            best = min(whole, key=lambda tid: (room[tid], tid))
            placement: tuple[tuple[str, int], ...] = ((best, processes),)
        else:
            chosen: list[tuple[str, int]] = []
            left = processes
            for tid in sorted(room, key=lambda t: (-room[t], t)):
                if left == 0 or room[tid] == 0:
                    break
                take = min(room[tid], left)
                chosen.append((tid, take))
                left -= take
            if left:
                return None
            placement = tuple(chosen)
        self._take(request, placement)
        self.holdings.append(Holding(request, placement))
        return placement


def victims_for(
    request: GangRequest,
    trainers: dict[str, common_pb2.Resources],
    holdings: Sequence[Holding],
    preemptible: set[str],
    reservations: Sequence[Reservation] = (),
) -> list[Holding] | None:
    """The fewest lower-priority jobs (among `preemptible`) whose preemption lets `request`
    fit, taking the lowest classes first and, within a class, the most recently started
    (it loses the least work); [] if it fits already (once jobs being preempted are gone:
    leave them out of `holdings`); None if preempting could not make room."""
    if TrainerPool(trainers, holdings, reservations).place(request) is not None:
        return []
    candidates = sorted(
        (
            h
            for h in holdings
            if h.request.job_id in preemptible and h.request.priority > request.priority
        ),
        key=lambda h: (-h.request.priority, -h.started),
    )
    chosen: list[Holding] = []
    for candidate in candidates:
        chosen.append(candidate)
        remaining = [h for h in holdings if h not in chosen]
        if TrainerPool(trainers, remaining, reservations).place(request) is not None:
            # drop any earlier pick the later ones made unnecessary
            for extra in list(chosen[:-1]):
                trial = [h for h in holdings if h not in chosen or h is extra]
                if TrainerPool(trainers, trial, reservations).place(request) is not None:
                    chosen.remove(extra)
            return chosen
    return None
