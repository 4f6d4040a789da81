"""Slots across the cluster, who holds them, and capacity kept aside by reservations.

A reservation sets slots aside for a priority class (and every class above it) or for a
tenant, in one of two ways:
- guaranteed: the beneficiaries can always get `slots` slots; whatever part of them they
  are not using is held back from everyone else;
- headroom: `slots` slots are always kept *free* for the beneficiaries, however many they
  already use, so their arrivals find a slot at once even while others saturate the
  cluster (latency isolation for `critical`; it costs others that much capacity).
A beneficiary may also use unreserved slots. Pure logic, no I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from llmos.priority import PriorityClass
from services.scheduler.fairshare import FairShareQueue, WorkItem


@dataclass(frozen=True)
class Reservation:
    """`slots` kept for `priority` (and higher classes) or for `tenant`."""

    slots: int
    priority: PriorityClass | None = None
    tenant: str | None = None
    headroom: bool = False

    def covers(self, tenant: str, priority: PriorityClass) -> bool:
        if self.tenant is not None:
            return tenant == self.tenant
        return self.priority is not None and priority <= self.priority


class SlotPool:
    """Slot accounting for admission decisions."""

    def __init__(self, total: int, reservations: list[Reservation] | None = None) -> None:
        self.total = total
        self.reservations = list(reservations or [])
        self._held: Counter[tuple[str, PriorityClass]] = Counter()

    @property
    def used(self) -> int:
        return sum(self._held.values())

    def _used_by(self, reservation: Reservation) -> int:
        return sum(n for (t, p), n in self._held.items() if reservation.covers(t, p))

    def can_admit(self, tenant: str, priority: PriorityClass) -> bool:
        """Whether a slot is free for this tenant and class, after reservations."""
        free = self.total - self.used
        held_back = sum(
            r.slots if r.headroom else max(0, r.slots - self._used_by(r))
            for r in self.reservations
            if not r.covers(tenant, priority)
        )
        return free - held_back > 0

    def acquire(self, tenant: str, priority: PriorityClass) -> None:
        self._held[(tenant, priority)] += 1

    def release(self, tenant: str, priority: PriorityClass) -> None:
        key = (tenant, priority)
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]


def next_admissible(queue: FairShareQueue, pool: SlotPool) -> WorkItem | None:
    """Pop the next item that may take a slot now: classes in priority order, within a
    class the fair-share choice; None if nothing queued may run."""
    if pool.used >= pool.total:
        return None
    for priority in PriorityClass:
        candidate = queue.peek(priority)
        if candidate is not None and pool.can_admit(candidate.tenant, priority):
            item = queue.pop([priority])
            assert item is candidate
            pool.acquire(item.tenant, priority)
            return item
    return None
