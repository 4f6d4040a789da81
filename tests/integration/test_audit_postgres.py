"""The audit log on PostgreSQL, as operators who outgrow one machine run it: two audit
services share one database; one writes (the lease), the other stands by and, once the
first is killed -9, continues the same chain — nothing lost or recorded twice, every
checkpoint verifies — and a record altered in the database is caught by the running
service. Real PostgreSQL, NATS (JetStream) and Redis."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from llmos.v1 import audit_pb2
from tests.integration.audit_service import (
    all_records,
    audit_env,
    standby_takes_over,
    stub,
)
from tests.integration.storage_client import Shared
from tools.devstack.infra import NatsServer, RedisServer
from tools.devstack.shared_storage import PostgresServer, database_name
from tools.harness import start_service


@pytest.fixture
def postgres(shared_servers: Shared) -> PostgresServer:
    """The session's PostgreSQL (its `llmos_audit` database is this test's alone)."""
    return shared_servers.postgres


def test_a_standby_continues_the_chain_in_postgresql_and_tampering_is_caught(
    own_nats: NatsServer, own_redis: RedisServer, postgres: PostgresServer, tmp_path: Path
) -> None:
    keys = tmp_path / "audit-keys"  # the signing key both instances share (a mounted secret)
    url = postgres.url("audit")  # no credentials: each reads the audit role's from secrets

    def audit(name: str) -> dict[str, str]:
        return audit_env(
            own_nats, own_redis, tmp_path / name,
            LLMOS_AUDIT_DIR=str(keys), LLMOS_AUDIT_DATABASE_URL=url,
        )  # fmt: skip

    first = start_service("services.audit", audit("one"), tmp_path / "logs")
    second = start_service("services.audit", audit("two"), tmp_path / "logs")
    try:
        published = standby_takes_over(own_nats.url, first, second)
        verdict = stub(second).VerifyAudit(audit_pb2.VerifyAuditRequest())
        stored = all_records(second)
        with psycopg.connect(postgres.admin_url(database_name("audit"))) as conn:
            conn.execute("UPDATE records SET outcome = 'PERMISSION_DENIED' WHERE seq = 17")
        tampered = stub(second).VerifyAudit(audit_pb2.VerifyAuditRequest())
    finally:
        second.stop()
    assert "standing by" in second.log_path.read_text()
    assert verdict.valid, verdict.detail
    assert verdict.checkpoints_checked >= 1
    assert [r.sequence for r in stored] == list(range(1, 301))
    assert sorted(r.record.id for r in stored) == sorted(r.id for r in published)
    assert not (keys / "audit.db").exists()  # the log is in PostgreSQL, not in a file
    assert (tampered.valid, tampered.first_bad_sequence) == (False, 17)
    assert "modified" in tampered.detail
