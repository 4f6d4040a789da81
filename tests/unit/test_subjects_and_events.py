"""NATS subjects are spelled in one place; events decode with the public protos alone."""

from __future__ import annotations

import pytest

from llmos import subjects
from llmos.events import Phase, phase_word, service_lifecycle
from llmos.v1 import common_pb2, events_pb2


def test_lifecycle_subjects_live_under_the_events_stream() -> None:
    subject = subjects.service_lifecycle("inference-worker", "started")
    assert subject == "llmos.events.service.inference-worker.started"
    assert subject.startswith(subjects.EVENTS_PREFIX + ".")


@pytest.mark.parametrize("bad", ["", "a.b", "*", ">", "with space"])
def test_tokens_that_would_change_the_subject_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        subjects.job_event(bad)


def test_unknown_event_kind_is_refused_with_the_known_ones_listed() -> None:
    with pytest.raises(ValueError, match="service, job, model"):
        subjects.events_of_kind("weather")


def test_lifecycle_event_round_trips_through_bytes() -> None:
    instance = common_pb2.ServiceInstance(service="audit", instance_id="audit-1", address="h:1")
    event = service_lifecycle(instance, Phase.PHASE_STOPPED, "SIGTERM")
    decoded = events_pb2.Event.FromString(event.SerializeToString())
    assert decoded.id and len(decoded.id) == 32
    assert decoded.time.seconds > 0
    assert decoded.source == "audit"
    assert decoded.WhichOneof("payload") == "service_lifecycle"
    assert decoded.service_lifecycle.instance.address == "h:1"
    assert decoded.service_lifecycle.reason == "SIGTERM"
    assert phase_word(decoded.service_lifecycle.phase) == "stopped"


def test_every_event_gets_its_own_id() -> None:
    instance = common_pb2.ServiceInstance(service="audit", instance_id="audit-1")
    ids = {service_lifecycle(instance, Phase.PHASE_STARTED).id for _ in range(100)}
    assert len(ids) == 100
