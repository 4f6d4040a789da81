"""What the audit log keeps and proves, on real NATS (JetStream) and a real audit
process: what the privacy policy stores and what it never stores; tamper found through
VerifyAudit, and a cut-off tail found after a restart through the witness; retention;
bad queries get a clear error."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from llmos.auditing import new_record
from llmos.v1 import audit_pb2
from services.audit.verify import main as offline_verify
from tests.integration.audit_service import (
    all_records,
    audit_env,
    make_records,
    publish,
    stub,
    verify,
    wait_for_records,
)
from tools.devstack.infra import NatsServer, RedisServer
from tools.harness import Process, eventually, start_service

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


def wait_for_witness(service: Process, sequence: int, timeout_s: float = 30) -> None:
    eventually(
        lambda: verify(service).witnessed_sequence == sequence,
        timeout_s,
        what=f"the witness to hold record {sequence}",
    )


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

        def pruned() -> audit_pb2.VerifyAuditResponse | None:
            verdict = verify(audit)
            return (
                verdict if (verdict.first_sequence, verdict.records_checked) == (41, 10) else None
            )

        verdict = eventually(pruned, 30, what="the first 40 records pruned")
    finally:
        audit.stop()
    assert verdict.valid, verdict.detail
    assert (verdict.first_sequence, verdict.last_sequence, verdict.records_checked) == (41, 50, 10)
