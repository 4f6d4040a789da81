"""The scheduler's queue: strict priority between classes, weighted fair share between
tenants within a class, measured in model tokens (not requests).

Within a class this is start-time fair queuing (Goyal et al., 1996): each tenant's next
item gets a start tag max(V, the tenant's last finish tag), its finish tag is the start
plus cost / weight, and the item with the smallest start tag goes first; V, the class's
virtual time, is the start tag of the item last dispatched. A tenant that sends long
prompts therefore advances its own clock faster and cannot starve others, and a tenant
returning from idle starts at V rather than cashing in credit for the time it was away.
Costs are estimates at dispatch (prompt + max new tokens); `settle` corrects a tenant's
clock by the difference once the true count is known.

Fair share decides who goes first, not who may wait: one tenant sending fast could still
fill the bounded queue and have everyone else refused. So each tenant may hold at most a
share of the queue's places (`tenant_share`, default half), and another tenant is still
admitted while that tenant is at its share.

Pure logic: no I/O, no clocks; the caller supplies times. Not thread-safe.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llmos.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from llmos.priority import PriorityClass


def check_class_allowed(
    allowed_classes: dict[str, set[PriorityClass]], tenant: str, priority: PriorityClass
) -> None:
    """PERMISSION_DENIED if `tenant` may not use `priority` (no entry: every class)."""
    allowed = allowed_classes.get(tenant)
    if allowed is not None and priority not in allowed:
        names = ", ".join(sorted(p.name.lower() for p in allowed)) or "none"
        raise PermissionDenied(
            f"tenant {tenant!r} may not use priority class {priority.word!r} (allowed: {names})"
        )


@dataclass
class WorkItem:
    """One request or job waiting for capacity."""

    item_id: str
    tenant: str
    priority: PriorityClass
    cost: int  # estimated model tokens (>= 1)
    enqueued_at: float
    payload: Any = None
    start_tag: float = 0.0


@dataclass
class _TenantLane:
    items: deque[WorkItem] = field(default_factory=deque)
    last_finish: float = 0.0


@dataclass
class _ClassQueue:
    lanes: dict[str, _TenantLane] = field(default_factory=dict)
    active: set[str] = field(default_factory=set)
    virtual_time: float = 0.0


class FairShareQueue:
    """Bounded, prioritised, tenant-fair queue of `WorkItem`s."""

    def __init__(
        self,
        capacity: int,
        weights: dict[str, float] | None = None,
        allowed_classes: dict[str, set[PriorityClass]] | None = None,
        tenant_share: float = 0.5,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not 0 < tenant_share <= 1:
            raise ValueError("tenant_share must be in (0, 1]")
        self._capacity = capacity
        #: the most places one tenant may hold (at least one, so a tiny queue still serves)
        self.tenant_limit = max(1, math.floor(capacity * tenant_share))
        self._held: Counter[str] = Counter()
        self._weights = dict(weights or {})
        self._allowed = dict(allowed_classes or {})
        self._classes = {p: _ClassQueue() for p in PriorityClass}
        self._index: dict[str, WorkItem] = {}
        #: tokens dispatched per (tenant, class): the counters operators look at
        self.served: defaultdict[tuple[str, PriorityClass], int] = defaultdict(int)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def weight(self, tenant: str) -> float:
        return self._weights.get(tenant, 1.0)

    def set_weight(self, tenant: str, weight: float) -> None:
        if not weight > 0:
            raise InvalidArgument("weight", "must be greater than 0")
        self._weights[tenant] = weight

    def check_class(self, tenant: str, priority: PriorityClass) -> None:
        check_class_allowed(self._allowed, tenant, priority)

    def push(self, item: WorkItem) -> None:
        """Queue `item`; RESOURCE_EXHAUSTED when the queue is full (never blocks)."""
        if item.cost < 1:
            raise InvalidArgument("cost", "must be at least 1 token")
        self.check_class(item.tenant, item.priority)
        if len(self._index) >= self._capacity:
            raise ResourceExhausted(
                f"the scheduler's queue is full ({self._capacity} waiting); retry later",
                retry_after_s=1.0,
            )
        if self._held[item.tenant] >= self.tenant_limit:
            raise ResourceExhausted(
                f"tenant {item.tenant!r} already has {self.tenant_limit} requests waiting for "
                f"this model, its share of the queue's {self._capacity} places; retry later",
                retry_after_s=1.0,
            )
        if item.item_id in self._index:
            raise InvalidArgument("id", f"{item.item_id!r} is already queued")
        queue = self._classes[item.priority]
        lane = queue.lanes.setdefault(item.tenant, _TenantLane())
        lane.items.append(item)
        queue.active.add(item.tenant)
        self._index[item.item_id] = item
        self._held[item.tenant] += 1

    def peek_class(self) -> PriorityClass | None:
        """The highest class with queued work."""
        for priority in PriorityClass:
            if self._classes[priority].active:
                return priority
        return None

    def peek(self, priority: PriorityClass) -> WorkItem | None:
        """The item `pop` would take from `priority`, left in place."""
        queue = self._classes[priority]
        if not queue.active:
            return None
        tenant, _ = self._earliest(queue)
        return queue.lanes[tenant].items[0]

    def pop(self, classes: Iterable[PriorityClass] | None = None) -> WorkItem | None:
        """The next item: highest class first (among `classes`, default all), then the
        tenant with the smallest start tag in that class."""
        for priority in classes if classes is not None else PriorityClass:
            queue = self._classes[priority]
            if not queue.active:
                continue
            tenant, start = self._earliest(queue)
            lane = queue.lanes[tenant]
            item = lane.items.popleft()
            lane.last_finish = start + item.cost / self.weight(tenant)
            queue.virtual_time = start
            item.start_tag = start
            if not lane.items:
                queue.active.discard(tenant)
            del self._index[item.item_id]
            self._release(tenant)
            self.served[(tenant, priority)] += item.cost
            return item
        return None

    def _earliest(self, queue: _ClassQueue) -> tuple[str, float]:
        best_tenant, best_start = "", float("inf")
        for tenant in queue.active:
            start = max(queue.virtual_time, queue.lanes[tenant].last_finish)
            if start < best_start or (start == best_start and tenant < best_tenant):
                best_tenant, best_start = tenant, start
        return best_tenant, best_start

    def requeue_front(self, item: WorkItem) -> None:
        """Put a dispatched item back at the head of its lane, as if it had not been
        taken (its worker refused it or died before it started); bypasses the bound."""
        queue = self._classes[item.priority]
        lane = queue.lanes.setdefault(item.tenant, _TenantLane())
        lane.last_finish = min(lane.last_finish, item.start_tag)
        lane.items.appendleft(item)
        queue.active.add(item.tenant)
        self._index[item.item_id] = item
        self._held[item.tenant] += 1
        self.served[(item.tenant, item.priority)] -= item.cost

    def settle(self, tenant: str, priority: PriorityClass, estimated: int, actual: int) -> None:
        """Correct a tenant's clock once a dispatched item's true token count is known."""
        delta = actual - estimated
        if delta:
            lane = self._classes[priority].lanes.get(tenant)
            if lane is not None:
                lane.last_finish = max(0.0, lane.last_finish + delta / self.weight(tenant))
            self.served[(tenant, priority)] += delta

    def remove(self, item_id: str) -> WorkItem | None:
        """Take a queued item out (cancelled); None if it is not queued."""
        item = self._index.pop(item_id, None)
        if item is None:
            return None
        queue = self._classes[item.priority]
        lane = queue.lanes[item.tenant]
        lane.items.remove(item)
        if not lane.items:
            queue.active.discard(item.tenant)
        self._release(item.tenant)
        return item

    def _release(self, tenant: str) -> None:
        self._held[tenant] -= 1
        if self._held[tenant] <= 0:
            del self._held[tenant]

    def queued(self) -> Iterator[WorkItem]:
        """Every queued item (no particular order)."""
        return iter(self._index.values())

    def depth(self) -> dict[PriorityClass, int]:
        """Queued items per class."""
        counts = dict.fromkeys(PriorityClass, 0)
        for item in self._index.values():
            counts[item.priority] += 1
        return counts
