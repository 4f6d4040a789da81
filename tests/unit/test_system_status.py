"""The gateway's view of the system: ready only when every service has a SERVING instance."""

from __future__ import annotations

from gateway.status import service_status, system_status
from llmos.health import NOT_SERVING, SERVING, UNREACHABLE
from llmos.services import REQUIRED_SERVICES
from llmos.v1 import common_pb2, gateway_pb2

State = gateway_pb2.ServiceStatus.State


def _instance(service: str) -> common_pb2.ServiceInstance:
    return common_pb2.ServiceInstance(service=service, instance_id=f"{service}-1")


def test_all_services_serving_is_ready() -> None:
    statuses = [service_status(_instance(name), SERVING, "") for name in REQUIRED_SERVICES]
    status = system_status(statuses, REQUIRED_SERVICES)
    assert status.ready
    assert list(status.missing_services) == []
    assert all(s.state == State.STATE_SERVING for s in status.services)


def test_a_missing_service_is_named_and_not_ready() -> None:
    present = [n for n in REQUIRED_SERVICES if n != "audit"]
    status = system_status(
        [service_status(_instance(n), SERVING, "") for n in present], REQUIRED_SERVICES
    )
    assert not status.ready
    assert list(status.missing_services) == ["audit"]


def test_not_serving_and_unreachable_instances_are_reported_with_their_reason() -> None:
    statuses = [service_status(_instance(n), SERVING, "") for n in REQUIRED_SERVICES]
    statuses[0] = service_status(_instance(REQUIRED_SERVICES[0]), NOT_SERVING, "h:1 draining")
    statuses[1] = service_status(_instance(REQUIRED_SERVICES[1]), UNREACHABLE, "timed out")
    status = system_status(statuses, REQUIRED_SERVICES)
    assert not status.ready
    assert status.services[0].state == State.STATE_NOT_SERVING
    assert status.services[0].detail == "h:1 draining"
    assert status.services[1].state == State.STATE_UNREACHABLE


def test_one_serving_replica_is_enough() -> None:
    statuses = [service_status(_instance(n), SERVING, "") for n in REQUIRED_SERVICES]
    statuses.append(service_status(_instance("gateway"), UNREACHABLE, "gone"))
    assert system_status(statuses, REQUIRED_SERVICES).ready
