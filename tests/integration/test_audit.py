"""The audit service as operators rely on it, on real NATS (JetStream) and a real audit
process: kill -9 while 10,000 events are published loses and doubles none; publishers
ride out a NATS outage; what the privacy policy stores and what it never stores; tamper
found through VerifyAudit, and a cut-off tail found after a restart through the witness;
retention; bad queries get a clear error."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import nats
import pytest

from llmos.auditing import AuditPublisher, new_record
from llmos.v1 import audit_pb2, audit_pb2_grpc
from services.audit.verify import main as offline_verify
from tests.integration.conftest import ServiceUnderTest, gateway_env, start_service
from tools.devstack.infra import NatsServer, RedisServer, start_nats

EVENTS = 10_000


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A NATS of this test only: the audit stream holds exactly what the test published."""
    server = start_nats(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


def audit_env(server: NatsServer, redis: RedisServer, data: Path, **extra: str) -> dict[str, str]:
    return {
        **gateway_env(server, redis),
        "LLMOS_DATA_DIR": str(data),
        "LLMOS_AUDIT_ACK_WAIT_S": "2",
        "LLMOS_AUDIT_CHECKPOINT_RECORDS": "1000",
        "LLMOS_AUDIT_CHECKPOINT_S": "0.5",
        **extra,
    }


def stub(service: ServiceUnderTest) -> audit_pb2_grpc.AuditStub:
    return audit_pb2_grpc.AuditStub(service.channel())


def wait_for_records(service: ServiceUnderTest, count: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        seen = stub(service).VerifyAudit(audit_pb2.VerifyAuditRequest()).records_checked
        if seen >= count:
            return
        time.sleep(0.3)
    raise AssertionError(f"{seen} of {count} records after {timeout_s:g}s")


def all_records(
    service: ServiceUnderTest, principal: str = ""
) -> list[audit_pb2.StoredAuditRecord]:
    request = audit_pb2.QueryAuditRequest(page_size=1000, principal=principal)
    found: list[audit_pb2.StoredAuditRecord] = []
    while True:
        page = stub(service).QueryAudit(request)
        found.extend(page.records)
        if not page.next_page_token:
            return found
        request.page_token = page.next_page_token


async def publish(url: str, records: list[audit_pb2.AuditRecord], pace_s: float = 0) -> int:
    """Publish through the real AuditPublisher, `pace_s` between bursts of 500."""
    nc = await nats.connect(url)
    publisher = AuditPublisher(nc.jetstream(), "test")
    publisher.start()
    for start in range(0, len(records), 500):
        for record in records[start : start + 500]:
            publisher.record(record)
        await asyncio.sleep(pace_s)
    await until(lambda: publisher.published >= len(records))
    await publisher.close()
    await nc.close()
    return publisher.published


async def until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return  # the caller's assertion says what is missing
        await asyncio.sleep(0.05)


def make_records(count: int, tenant: str = "lab-a") -> list[audit_pb2.AuditRecord]:
    records = []
    for n in range(count):
        record = new_record("test", "/llmos.v1.Gateway/Generate")
        record.tenant = tenant
        record.principal = f"user-{n % 7}"
        record.outcome = "OK"
        record.resource = f"model/m{n % 3}"
        records.append(record)
    return records


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


async def redeliver(url: str, records: list[audit_pb2.AuditRecord]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for record in records:  # no Nats-Msg-Id: JetStream stores them again
        await js.publish("llmos.audit.test", record.SerializeToString())
    await nc.close()


SECRETS = (
    "alice@example.com",
    "4111 1111 1111 1111",
    "+44 20 7946 0958",
    "203.0.113.77",
    "EMP-314159",
)


def personal_record() -> audit_pb2.AuditRecord:
    record = new_record("gateway", "/llmos.v1.Gateway/Generate")
    record.tenant = "lab-a"
    record.principal = "alice@example.com"
    record.client_address = "ipv4:203.0.113.77:5123"
    record.outcome = "OK"
    record.prompt = "I am alice@example.com, card 4111 1111 1111 1111, staff EMP-314159"
    record.output = "Call +44 20 7946 0958 from 203.0.113.77"
    record.detail = "name 'alice@example.com' is not allowed"
    return record


def stored_bytes(data: Path) -> bytes:
    """Everything the audit service wrote to disk: database, WAL and keys."""
    return b"".join(p.read_bytes() for p in sorted((data / "audit").rglob("*")) if p.is_file())


def test_redaction_policy_decides_what_is_stored(
    own_nats: NatsServer, own_redis: RedisServer, tmp_path: Path
) -> None:
    patterns = tmp_path / "patterns"
    patterns.write_text("EMP-\\d{6}\n")
    redacted = audit_env(
        own_nats,
        own_redis,
        tmp_path / "kept",
        LLMOS_AUDIT_CONTENT="redacted",
        LLMOS_AUDIT_PSEUDONYMISE="on",
        LLMOS_AUDIT_REDACT_PATTERNS_FILE=str(patterns),
    )
    audit = start_service("services.audit", redacted, tmp_path / "logs")
    try:
        asyncio.run(publish(own_nats.url, [personal_record()]))
        wait_for_records(audit, 1)
        # found by the principal as issued, stored under its pseudonym
        (found,) = all_records(audit, principal="alice@example.com")
    finally:
        audit.stop()
    record = found.record
    assert record.principal.startswith("pseudonym:")
    assert record.client_address.startswith("pseudonym:")
    assert record.prompt == "I am [EMAIL], card [CARD], staff [REDACTED]"
    assert record.output == "Call [PHONE] from [IP]"
    assert record.detail == "name '[EMAIL]' is not allowed"
    on_disk = stored_bytes(tmp_path / "kept")
    for secret in SECRETS:
        assert secret.encode() not in on_disk

    # the default policy: no prompts or outputs at all, principals as issued
    default = audit_env(own_nats, own_redis, tmp_path / "default")
    audit = start_service("services.audit", default, tmp_path / "logs")
    try:
        asyncio.run(publish(own_nats.url, [personal_record()]))
        wait_for_records(audit, 1)
        (found,) = all_records(audit)
    finally:
        audit.stop()
    assert (found.record.prompt, found.record.output) == ("", "")
    assert found.record.principal == "alice@example.com"
    on_disk = stored_bytes(tmp_path / "default")
    for secret in ("4111 1111 1111 1111", "+44 20 7946 0958", "EMP-314159"):
        assert secret.encode() not in on_disk


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
        await until(lambda: publisher.published >= 100)
        own_nats.stop()  # from this thread: its child dies with the thread that started it
        for record in records[100:]:  # NATS is down: buffered, retried
            publisher.record(record)
        for record in overflow:  # 80 into a buffer of 50
            small.record(record)
        await asyncio.sleep(2)
        during = publisher.published
        restarted = start_nats(tmp_path / "nats", port=own_nats.port)
        own_nats.proc = restarted.proc  # stopped at the end like the first
        await until(lambda: publisher.published >= len(records) and small.published >= 50)
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


def test_tampering_is_reported_by_the_running_service(
    own_nats: NatsServer, own_redis: RedisServer, tmp_path: Path
) -> None:
    env = audit_env(own_nats, own_redis, tmp_path / "data")
    audit = start_service("services.audit", env, tmp_path / "logs")
    try:
        asyncio.run(publish(own_nats.url, make_records(50)))
        wait_for_records(audit, 50)
        assert stub(audit).VerifyAudit(audit_pb2.VerifyAuditRequest()).valid
        conn = sqlite3.connect(tmp_path / "data" / "audit" / "audit.db")
        with conn:
            conn.execute("UPDATE records SET outcome = 'PERMISSION_DENIED' WHERE seq = 17")
        conn.close()
        verdict = stub(audit).VerifyAudit(audit_pb2.VerifyAuditRequest())
        assert (verdict.valid, verdict.first_bad_sequence) == (False, 17)
        assert "modified" in verdict.detail

        for request, field in (
            (audit_pb2.QueryAuditRequest(page_size=5000), "page_size"),
            (audit_pb2.QueryAuditRequest(page_token="not-a-token"), "page_token"),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub(audit).QueryAudit(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details().startswith(field)
        backwards = audit_pb2.QueryAuditRequest()
        backwards.since.FromSeconds(2_000_000_000)
        backwards.until.FromSeconds(1_000_000_000)
        with pytest.raises(grpc.RpcError) as refused:
            stub(audit).QueryAudit(backwards)
        assert refused.value.details().startswith("until")
    finally:
        audit.stop()


def verify(service: ServiceUnderTest) -> audit_pb2.VerifyAuditResponse:
    response: audit_pb2.VerifyAuditResponse = stub(service).VerifyAudit(
        audit_pb2.VerifyAuditRequest(), timeout=30
    )
    return response


def wait_for_witness(service: ServiceUnderTest, sequence: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (held := verify(service).witnessed_sequence) != sequence:
        if time.monotonic() > deadline:
            raise AssertionError(f"the witness holds record {held}, not {sequence}")
        time.sleep(0.2)


def test_records_cut_off_with_their_checkpoints_are_found_after_a_restart(
    own_nats: NatsServer,
    own_redis: RedisServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The file alone cannot show a tail deleted with its checkpoints once the service
    that wrote it has restarted; the witness on JetStream can, and the restarted service
    does not publish over that evidence while it goes on recording."""
    env = audit_env(own_nats, own_redis, tmp_path / "data")
    audit = start_service("services.audit", env, tmp_path / "logs")
    try:
        asyncio.run(publish(own_nats.url, make_records(120)))
        wait_for_records(audit, 120)
        wait_for_witness(audit, 120)
        assert verify(audit).valid
    finally:
        audit.stop()
    conn = sqlite3.connect(tmp_path / "data" / "audit" / "audit.db")
    with conn:  # while the service is down: no head in memory to compare with
        conn.execute("DELETE FROM records WHERE seq > 100")
        conn.execute("DELETE FROM checkpoints WHERE seq > 100")
    conn.close()
    copy = tmp_path / "data" / "audit"
    assert offline_verify([str(copy)]) == 0  # the file alone shows nothing
    assert offline_verify([str(copy), "--witness", own_nats.url]) == 1
    assert "the witness holds a checkpoint signed at record 120" in capsys.readouterr().out

    audit = start_service("services.audit", env, tmp_path / "logs")
    try:
        truncated = verify(audit)
        assert (truncated.valid, truncated.first_bad_sequence) == (False, 101)
        assert "the witness holds a checkpoint signed at record 120" in truncated.detail
        asyncio.run(publish(own_nats.url, make_records(30)))
        wait_for_records(audit, 130)
        time.sleep(2.5)  # several checkpoint and witness rounds
        replaced = verify(audit)
    finally:
        audit.stop()
    assert (replaced.valid, replaced.first_bad_sequence) == (False, 120)
    assert "records up to 120 were rewritten or replaced" in replaced.detail
    assert replaced.witnessed_sequence == 120  # the evidence was not published over
    assert replaced.last_checkpoint_sequence == 130  # while the log went on
    assert "no longer holds what its witness vouches for" in audit.log_path.read_text()


def test_retention_prunes_old_records_and_the_rest_still_verifies(
    own_nats: NatsServer, own_redis: RedisServer, tmp_path: Path
) -> None:
    env = audit_env(
        own_nats,
        own_redis,
        tmp_path / "data",
        LLMOS_AUDIT_RETENTION_DAYS=str(3 / 86_400),  # 3 seconds
        LLMOS_AUDIT_PRUNE_INTERVAL_S="0.5",
    )
    audit = start_service("services.audit", env, tmp_path / "logs")
    try:
        asyncio.run(publish(own_nats.url, make_records(40)))
        wait_for_records(audit, 40)
        time.sleep(3.5)
        asyncio.run(publish(own_nats.url, make_records(10)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            verdict = stub(audit).VerifyAudit(audit_pb2.VerifyAuditRequest())
            if verdict.first_sequence == 41 and verdict.records_checked == 10:
                break
            time.sleep(0.3)
    finally:
        audit.stop()
    assert verdict.valid, verdict.detail
    assert (verdict.first_sequence, verdict.last_sequence, verdict.records_checked) == (41, 50, 10)


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
    before, after = make_records(200), make_records(100)
    try:
        asyncio.run(publish(own_nats.url, before))
        wait_for_records(first, len(before))
        first.kill()
        asyncio.run(publish(own_nats.url, after))
        wait_for_records(second, len(before) + len(after))
        verdict = stub(second).VerifyAudit(audit_pb2.VerifyAuditRequest())
        stored = all_records(second)
    finally:
        second.stop()
    assert "standing by" in second.log_path.read_text()
    assert verdict.valid, verdict.detail
    assert [r.sequence for r in stored] == list(range(1, 301))
    assert sorted(r.record.id for r in stored) == sorted(r.id for r in before + after)
