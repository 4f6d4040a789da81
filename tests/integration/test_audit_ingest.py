"""Audit ingest as operators rely on it, on real NATS (JetStream) and real audit
processes: kill -9 while 10,000 events are published loses and doubles none; publishers
ride out a NATS outage; one writer at a time, and a standby takes over the same chain."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import nats
import pytest

from llmos.auditing import AuditPublisher
from llmos.v1 import audit_pb2
from tests.integration.audit_service import (
    all_records,
    audit_env,
    make_records,
    publish,
    redeliver,
    standby_takes_over,
    stub,
    wait_for_records,
)
from tools.devstack.infra import NatsServer, RedisServer, start_nats
from tools.harness import eventually_async, start_service

EVENTS = 10_000


def test_kill9_while_10000_events_are_published_loses_and_doubles_none(
    own_nats: NatsServer, own_redis: RedisServer, tmp_path: Path
) -> None:
    env = audit_env(own_nats, own_redis, tmp_path / "data", LLMOS_AUDIT_BATCH="200")
    audit = start_service("services.audit", env, tmp_path / "logs")
    records = make_records(EVENTS)
    published: list[int] = []
    publisher = threading.Thread(
        target=lambda: published.append(asyncio.run(publish(own_nats.url, records, 0.2)))
    )
    publisher.start()
    try:
        wait_for_records(audit, 1500)
        audit.kill()  # mid-stream: batches committed but not acknowledged, and unread ones
        still_publishing = publisher.is_alive()
        audit = start_service("services.audit", env, tmp_path / "logs")
    finally:
        publisher.join(120)
    try:
        assert published == [EVENTS]
        # the same events again, as a publisher retrying outside JetStream's duplicate window
        asyncio.run(redeliver(own_nats.url, records[:300]))
        wait_for_records(audit, EVENTS)
        time.sleep(3)  # past the ack wait: anything delivered again has arrived
        verdict = stub(audit).VerifyAudit(audit_pb2.VerifyAuditRequest())
        stored = all_records(audit)
    finally:
        audit.stop()
    assert still_publishing
    assert verdict.valid, verdict.detail
    assert verdict.records_checked == EVENTS
    assert [r.sequence for r in stored] == list(range(1, EVENTS + 1))
    assert sorted(r.record.id for r in stored) == sorted(r.id for r in records)
    assert verdict.last_checkpoint_sequence >= EVENTS - 1000


def test_publishers_ride_out_a_nats_outage(
    own_nats: NatsServer,
    own_redis: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While NATS is down a publisher buffers and retries, saying so; all arrive once NATS
    is back. A buffer that overflows drops its oldest records and says how many."""
    env = audit_env(own_nats, own_redis, tmp_path / "data")
    audit = start_service("services.audit", env, tmp_path / "logs")
    records = make_records(500)
    overflow = make_records(80)

    async def scenario() -> tuple[int, int, int]:
        nc = await nats.connect(own_nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        publisher = AuditPublisher(nc.jetstream(), "test")
        small = AuditPublisher(nc.jetstream(), "test", buffer=50)
        publisher.start()
        small.start()
        for record in records[:100]:
            publisher.record(record)
        await eventually_async(lambda: publisher.published >= 100, 60, what="100 published")
        own_nats.stop()  # from this thread: its child dies with the thread that started it
        for record in records[100:]:  # NATS is down: buffered, retried
            publisher.record(record)
        for record in overflow:  # 80 into a buffer of 50
            small.record(record)
        await asyncio.sleep(2)
        during = publisher.published
        restarted = start_nats(
            tmp_path / "nats", port=own_nats.port, secrets_dir=own_nats.secrets_dir
        )
        own_nats.proc = restarted.proc  # stopped at the end like the first
        await eventually_async(
            lambda: publisher.published >= len(records) and small.published >= 50,
            60,
            what="the buffered records published once NATS is back",
        )
        await publisher.close()
        await small.close()
        await nc.close()
        return during, publisher.dropped, small.dropped

    try:
        with caplog.at_level(logging.WARNING, logger="llmos.audit"):
            during, dropped, overflowed = asyncio.run(scenario())
        wait_for_records(audit, len(records) + 50)
        stored = all_records(audit)
        verdict = stub(audit).VerifyAudit(audit_pb2.VerifyAuditRequest())
    finally:
        audit.stop()
    assert during == 100  # nothing got through while NATS was down ...
    assert dropped == 0
    kept = records + overflow[30:]  # the small buffer kept its newest 50
    assert sorted(r.record.id for r in stored) == sorted(r.id for r in kept)  # ... or was lost
    assert verdict.valid and verdict.records_checked == len(kept)
    assert overflowed == 30
    said = [r.getMessage() for r in caplog.records]
    assert "audit publish failed; retrying" in said
    assert "audit buffer full: dropping the oldest records" in said


def test_one_writer_at_a_time_and_a_standby_takes_over(
    own_nats: NatsServer, own_redis: RedisServer, tmp_path: Path
) -> None:
    """Two audit services sharing a directory: one writes, the other stands by and, once
    the first is killed, continues the same chain. Nothing is lost or recorded twice."""
    shared = str(tmp_path / "shared-audit")
    first = start_service(
        "services.audit",
        audit_env(own_nats, own_redis, tmp_path / "one", LLMOS_AUDIT_DIR=shared),
        tmp_path / "logs",
    )
    second = start_service(
        "services.audit",
        audit_env(own_nats, own_redis, tmp_path / "two", LLMOS_AUDIT_DIR=shared),
        tmp_path / "logs",
    )
    try:
        published = standby_takes_over(own_nats.url, first, second)
        verdict = stub(second).VerifyAudit(audit_pb2.VerifyAuditRequest())
        stored = all_records(second)
    finally:
        second.stop()
    assert "standing by" in second.log_path.read_text()
    assert verdict.valid, verdict.detail
    assert [r.sequence for r in stored] == list(range(1, 301))
    assert sorted(r.record.id for r in stored) == sorted(r.id for r in published)
