"""The audit log's tamper evidence, on a real SQLite file edited behind the service's back:
a modified field, a deleted record, a reordering, a rewritten chain, a truncation after a
signed checkpoint and a forged checkpoint are each reported at the first bad record;
pruning for retention leaves what remains verifiable; redeliveries are recorded once.
The witness's copy of the newest checkpoint finds what the file alone cannot."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.audit.chain import Checkpoint, Entry, link
from services.audit.keys import signing_key, trusted_keys
from services.audit.store import AuditLog, Filters, connect
from services.audit.verify import Verdict, main, verify_log


def entry(n: int, tenant: str = "lab-a", recorded_ns: int = 0) -> Entry:
    return Entry(
        event_id=f"event-{n}",
        time_ns=1_700_000_000_000_000_000 + n,
        recorded_ns=recorded_ns or 1_700_000_000_000_000_000 + n,
        source="gateway",
        request_id=f"req-{n}",
        principal=f"user-{n % 3}",
        client_id="cli",
        tenant=tenant,
        action="/llmos.v1.Gateway/Generate",
        resource=f"model/m{n % 2}",
        outcome="OK" if n % 5 else "PERMISSION_DENIED",
        detail="",
        latency_us=1000 + n,
        tokens=n,
        client_address="ipv4:127.0.0.1:1",
        prompt="",
        output="",
    )


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    return tmp_path / "audit"


@pytest.fixture
def audit_log(audit_dir: Path) -> Iterator[AuditLog]:
    """A log of 250 records with a checkpoint every 100 (at 100 and 200)."""
    log = AuditLog(audit_dir / "audit.db", signing_key(audit_dir / "keys"), checkpoint_every=100)
    for start in range(1, 251, 25):
        log.append([entry(n) for n in range(start, start + 25)])
    try:
        yield log
    finally:
        log.close()


def verify(
    audit_dir: Path, log: AuditLog | None = None, witnessed: Checkpoint | None = None
) -> Verdict:
    database = connect(audit_dir / "audit.db")
    try:
        with database.snapshot() as conn:
            keys = trusted_keys(audit_dir / "keys")
            return verify_log(conn, keys, log.head if log else None, witnessed)
    finally:
        database.close()


def tamper(audit_dir: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Edit the database file directly, as someone with access to the disk would."""
    conn = sqlite3.connect(audit_dir / "audit.db")
    with conn:
        for sql, args in statements:
            conn.execute(sql, args)
    conn.close()


def test_an_untouched_log_verifies(audit_log: AuditLog, audit_dir: Path) -> None:
    verdict = verify(audit_dir, audit_log)
    assert verdict.valid, verdict.detail
    assert (verdict.records_checked, verdict.first_sequence, verdict.last_sequence) == (250, 1, 250)
    assert verdict.checkpoints_checked == 2
    assert verdict.last_checkpoint_sequence == 200


def test_a_modified_field_is_found_at_its_record(audit_log: AuditLog, audit_dir: Path) -> None:
    tamper(audit_dir, ("UPDATE records SET outcome = 'NOT_FOUND' WHERE seq = 137", ()))
    verdict = verify(audit_dir, audit_log)
    assert not verdict.valid
    assert verdict.first_bad_sequence == 137
    assert "modified" in verdict.detail


def test_a_deleted_record_is_found(audit_log: AuditLog, audit_dir: Path) -> None:
    tamper(audit_dir, ("DELETE FROM records WHERE seq = 42", ()))
    verdict = verify(audit_dir, audit_log)
    assert not verdict.valid
    assert verdict.first_bad_sequence == 42
    assert "missing" in verdict.detail


def test_a_deleted_first_record_is_found(audit_log: AuditLog, audit_dir: Path) -> None:
    tamper(audit_dir, ("DELETE FROM records WHERE seq = 1", ()))
    verdict = verify(audit_dir, audit_log)
    assert (verdict.valid, verdict.first_bad_sequence) == (False, 1)


def test_a_reordering_is_found(audit_log: AuditLog, audit_dir: Path) -> None:
    # swap the places of records 60 and 61, each keeping its own hash
    tamper(
        audit_dir,
        ("UPDATE records SET seq = -1 WHERE seq = 60", ()),
        ("UPDATE records SET seq = 60 WHERE seq = 61", ()),
        ("UPDATE records SET seq = 61 WHERE seq = -1", ()),
    )
    verdict = verify(audit_dir, audit_log)
    assert not verdict.valid
    assert verdict.first_bad_sequence == 60


def rewrite_from(audit_dir: Path, sequence: int) -> None:
    """Change one record and recompute every hash from it on, as a careful forger would."""
    conn = sqlite3.connect(audit_dir / "audit.db")
    columns = [row[1] for row in conn.execute("PRAGMA table_info(records)")][1:-1]
    previous = conn.execute("SELECT hash FROM records WHERE seq = ?", (sequence - 1,)).fetchone()
    with conn:
        conn.execute("UPDATE records SET principal = 'someone-else' WHERE seq = ?", (sequence,))
        for row in conn.execute(
            f"SELECT seq, {', '.join(columns)} FROM records WHERE seq >= ? ORDER BY seq",
            (sequence,),
        ).fetchall():
            previous = (link(previous[0], row[0], tuple(row[1:])),)
            conn.execute("UPDATE records SET hash = ? WHERE seq = ?", (previous[0], row[0]))
    conn.close()


def test_a_rewritten_chain_is_caught_by_the_next_checkpoint(
    audit_log: AuditLog, audit_dir: Path
) -> None:
    """Someone who changes record 150 and recomputes every hash after it still cannot
    produce the checkpoint signed at 200."""
    rewrite_from(audit_dir, 150)
    verdict = verify(audit_dir)
    assert not verdict.valid
    assert verdict.first_bad_sequence == 101
    assert "rewritten" in verdict.detail


def test_truncation_after_a_signed_checkpoint_is_found(
    audit_log: AuditLog, audit_dir: Path
) -> None:
    tamper(audit_dir, ("DELETE FROM records WHERE seq > 180", ()))
    verdict = verify(audit_dir)  # even without the service's own head
    assert not verdict.valid
    assert verdict.first_bad_sequence == 181
    assert "truncated" in verdict.detail


def test_truncation_of_records_and_checkpoint_is_found_by_the_running_service(
    audit_log: AuditLog, audit_dir: Path
) -> None:
    tamper(
        audit_dir,
        ("DELETE FROM records WHERE seq > 190", ()),
        ("DELETE FROM checkpoints WHERE seq = 200", ()),
    )
    verdict = verify(audit_dir, audit_log)
    assert (verdict.valid, verdict.first_bad_sequence) == (False, 191)
    assert "wrote through record 250" in verdict.detail


def test_records_cut_off_with_their_checkpoint_are_found_by_the_witness(
    audit_log: AuditLog, audit_dir: Path
) -> None:
    """The file alone cannot show a tail removed together with its checkpoint (after a
    restart the service's own head is gone too); the witness's copy of checkpoint 200 can."""
    witnessed = audit_log.checkpoints_after(100)[0]
    tamper(
        audit_dir,
        ("DELETE FROM records WHERE seq > 190", ()),
        ("DELETE FROM checkpoints WHERE seq = 200", ()),
    )
    assert verify(audit_dir).valid  # the gap the witness closes
    verdict = verify(audit_dir, witnessed=witnessed)
    assert (verdict.valid, verdict.first_bad_sequence) == (False, 191)
    assert "the witness holds a checkpoint signed at record 200" in verdict.detail


def test_a_rewrite_whose_checkpoint_was_deleted_is_found_by_the_witness(
    audit_log: AuditLog, audit_dir: Path
) -> None:
    witnessed = audit_log.checkpoints_after(100)[0]
    rewrite_from(audit_dir, 150)
    tamper(audit_dir, ("DELETE FROM checkpoints WHERE seq = 200", ()))
    assert verify(audit_dir).valid  # nothing in the file contradicts the new chain
    verdict = verify(audit_dir, witnessed=witnessed)
    assert (verdict.valid, verdict.first_bad_sequence) == (False, 200)
    assert "records up to 200 were rewritten" in verdict.detail


def test_a_forged_witness_checkpoint_is_reported(audit_log: AuditLog, audit_dir: Path) -> None:
    real = audit_log.checkpoints_after(100)[0]
    forged = Checkpoint(250, real.hash, real.time_ns, real.kind, real.key_id, real.signature)
    verdict = verify(audit_dir, audit_log, forged)
    assert (verdict.valid, verdict.first_bad_sequence) == (False, 250)
    assert "forged" in verdict.detail
    assert verify(audit_dir, audit_log, real).valid


def test_a_forged_checkpoint_is_found(audit_log: AuditLog, audit_dir: Path) -> None:
    tamper(audit_dir, ("UPDATE checkpoints SET time_ns = time_ns + 1 WHERE seq = 100", ()))
    verdict = verify(audit_dir, audit_log)
    assert (verdict.valid, verdict.first_bad_sequence) == (False, 100)
    assert "signature" in verdict.detail


def test_redelivered_events_are_recorded_once(audit_log: AuditLog, audit_dir: Path) -> None:
    added = audit_log.append([entry(7), entry(251), entry(251), entry(250), entry(252)])
    assert added == 2
    assert audit_log.count() == 252
    assert verify(audit_dir, audit_log).valid


def test_retention_prunes_behind_a_signed_checkpoint(audit_dir: Path) -> None:
    log = AuditLog(audit_dir / "audit.db", signing_key(audit_dir / "keys"), checkpoint_every=50)
    try:
        log.append([entry(n, recorded_ns=1_000 + n) for n in range(1, 121)])
        removed = log.prune(before_ns=1_000 + 71)  # records 1-70 are past retention
        assert removed == 70
        assert log.count() == 50
        verdict = verify(audit_dir, log)
        assert verdict.valid, verdict.detail
        assert (verdict.first_sequence, verdict.last_sequence) == (71, 120)
        log.append([entry(n) for n in range(121, 131)])
        assert verify(audit_dir, log).valid
        # a witnessed checkpoint at a pruned record is accounted for by the prune checkpoint
        pruned_witness = Checkpoint.sign(
            signing_key(audit_dir / "keys"), "periodic", 50, bytes(32), 1
        )
        assert verify(audit_dir, log, pruned_witness).valid
    finally:
        log.close()
    # a record removed after the prune checkpoint is still found
    tamper(audit_dir, ("DELETE FROM records WHERE seq = 71", ()))
    verdict = verify(audit_dir)
    assert (verdict.valid, verdict.first_bad_sequence) == (False, 71)


def test_the_chain_continues_across_restarts(audit_log: AuditLog, audit_dir: Path) -> None:
    audit_log.close()
    reopened = AuditLog(audit_dir / "audit.db", signing_key(audit_dir / "keys"), 100)
    try:
        assert reopened.head.sequence == 250
        assert reopened.append([entry(n) for n in range(251, 260)]) == 9
        assert verify(audit_dir, reopened).valid
    finally:
        reopened.close()


def test_queries_filter_and_page(audit_log: AuditLog) -> None:
    denied = audit_log.query(Filters(outcome="PERMISSION_DENIED"), after=0, limit=1000)
    assert [r.sequence for r in denied] == list(range(5, 251, 5))
    first = audit_log.query(Filters(resource="model/*", principal="user-1"), after=0, limit=10)
    rest = audit_log.query(
        Filters(resource="model/*", principal="user-1"), after=first[-1].sequence, limit=1000
    )
    assert [r.sequence for r in first + rest] == list(range(1, 251, 3))
    newest = audit_log.query(Filters(tenant="lab-a"), after=0, limit=3, newest_first=True)
    assert [r.sequence for r in newest] == [250, 249, 248]
    assert audit_log.query(Filters(tenant="lab-b"), after=0, limit=10) == []
    window = audit_log.query(
        Filters(since_ns=entry(10).time_ns, until_ns=entry(20).time_ns), after=0, limit=100
    )
    assert [r.sequence for r in window] == list(range(10, 20))


def test_a_tenant_filter_is_an_exact_name_never_a_pattern(audit_log: AuditLog) -> None:
    """A tenant's own name is its filter (from its token): `lab*` must not reach `lab-a`."""
    assert audit_log.query(Filters(tenant="lab*"), after=0, limit=10) == []
    assert audit_log.query(Filters(tenant="*"), after=0, limit=10) == []
    assert len(audit_log.query(Filters(tenant="lab-a"), after=0, limit=10)) == 10


def test_offline_verification_exit_status(
    audit_log: AuditLog, audit_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(audit_dir)]) == 0
    tamper(audit_dir, ("UPDATE records SET tenant = 'lab-b' WHERE seq = 3", ()))
    assert main([str(audit_dir)]) == 1
    assert "INVALID at record 3" in capsys.readouterr().out
