"""System status: which services LLM OS needs, which are up. Pure logic, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from llmos.health import NOT_SERVING, SERVING
from llmos.v1 import common_pb2, gateway_pb2

State = gateway_pb2.ServiceStatus.State

_STATE_OF = {SERVING: State.STATE_SERVING, NOT_SERVING: State.STATE_NOT_SERVING}


def service_status(
    instance: common_pb2.ServiceInstance, health_state: str, detail: str
) -> gateway_pb2.ServiceStatus:
    """One instance's status from its health-check answer."""
    status = gateway_pb2.ServiceStatus(
        instance=instance,
        state=_STATE_OF.get(health_state, State.STATE_UNREACHABLE),
        detail=detail,
    )
    status.checked_at.GetCurrentTime()
    return status


def system_status(
    statuses: Iterable[gateway_pb2.ServiceStatus], required: Sequence[str]
) -> gateway_pb2.SystemStatus:
    """Ready means: every required service has at least one SERVING instance."""
    statuses = list(statuses)
    serving = {s.instance.service for s in statuses if s.state == State.STATE_SERVING}
    registered = {s.instance.service for s in statuses}
    return gateway_pb2.SystemStatus(
        services=statuses,
        missing_services=[name for name in required if name not in registered],
        ready=all(name in serving for name in required),
    )
