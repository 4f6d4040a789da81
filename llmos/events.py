"""Constructors for the protobuf events every service publishes (see events.proto)."""

from __future__ import annotations

import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from llmos.log import request_id_var
from llmos.v1 import common_pb2, events_pb2

Phase = events_pb2.ServiceLifecycle.Phase


def new_event(source: str, tenant: str = "") -> events_pb2.Event:
    """An empty event envelope with a unique id, the current time and request id."""
    event = events_pb2.Event(
        id=uuid.uuid4().hex, source=source, tenant=tenant, request_id=request_id_var.get()
    )
    event.time.GetCurrentTime()
    return event


def service_lifecycle(
    instance: common_pb2.ServiceInstance, phase: Phase, reason: str = ""
) -> events_pb2.Event:
    """A `service started/stopping/stopped` event for `instance`."""
    event = new_event(instance.service)
    event.service_lifecycle.instance.CopyFrom(instance)
    event.service_lifecycle.phase = phase
    event.service_lifecycle.reason = reason
    return event


def phase_word(phase: Phase) -> str:
    """`PHASE_STARTED` -> `started`: the last token of the lifecycle subject."""
    return Phase.Name(phase).removeprefix("PHASE_").lower()


def now() -> Timestamp:
    """The current time as a protobuf Timestamp."""
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
