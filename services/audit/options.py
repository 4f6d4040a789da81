"""The audit service's own configuration (LLMOS_* variables beyond the common ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmos.config import EnvReader
from llmos.database import POSTGRES_SCHEMES
from llmos.redaction import RedactionPolicy, read_redaction_policy

DAY_S = 86_400.0


@dataclass(frozen=True)
class AuditOptions:
    #: where the database and keys live (default <data dir>/audit)
    directory: Path | None
    #: sign a checkpoint after this many records ...
    checkpoint_records: int
    #: ... or this many seconds after the first record not yet covered
    checkpoint_s: float
    #: records older than this are pruned (0: kept forever)
    retention_s: float
    prune_interval_s: float
    #: events taken from JetStream per transaction
    batch: int
    #: how long JetStream waits for an acknowledgement before delivering again
    ack_wait_s: float
    #: ingest this many seconds behind raises an `audit_lag` event
    lag_alert_s: float
    policy: RedactionPolicy
    #: PostgreSQL for the log ("": SQLite, `audit.db` under the audit directory)
    database_url: str = ""

    def root(self, data_dir: Path) -> Path:
        return self.directory or data_dir / "audit"


def read_audit_options(env: EnvReader) -> AuditOptions:
    directory = env.text(
        "AUDIT_DIR",
        "",
        doc="the log (`audit.db`) and its keys",
        default_shown="`<data dir>/audit`",
    )
    return AuditOptions(
        directory=Path(directory).resolve() if directory else None,
        checkpoint_records=env.integer(
            "AUDIT_CHECKPOINT_RECORDS",
            1000,
            minimum=1,
            maximum=10**7,
            doc="sign a checkpoint after this many records ...",
        ),
        checkpoint_s=env.number(
            "AUDIT_CHECKPOINT_S",
            10.0,
            minimum=0.05,
            maximum=DAY_S,
            doc="... or this many seconds after the first record not yet covered",
        ),
        retention_s=env.number(
            "AUDIT_RETENTION_DAYS",
            365.0,
            minimum=0,
            maximum=36_500,
            doc="records older than this many days are pruned (0: kept forever)",
        )
        * DAY_S,
        prune_interval_s=env.number(
            "AUDIT_PRUNE_INTERVAL_S",
            3600.0,
            minimum=0.1,
            maximum=DAY_S,
            doc="seconds between looks for records to prune",
        ),
        batch=env.integer(
            "AUDIT_BATCH",
            1000,
            minimum=1,
            maximum=10_000,
            doc="events taken from JetStream per transaction",
        ),
        ack_wait_s=env.number(
            "AUDIT_ACK_WAIT_S",
            30.0,
            minimum=1,
            maximum=3600,
            doc="seconds before JetStream delivers an unacknowledged event again",
        ),
        lag_alert_s=env.number(
            "AUDIT_LAG_ALERT_S",
            60.0,
            minimum=1,
            maximum=DAY_S,
            doc="ingest this many seconds behind publishes an `audit_lag` event (an alert)",
        ),
        policy=read_redaction_policy(env),
        database_url=env.url(
            "AUDIT_DATABASE_URL",
            "",
            POSTGRES_SCHEMES,
            doc="PostgreSQL for the log, shared by the writer and its standbys; with no user "
            "and password in it, those of `<secrets dir>/postgres/audit.json`",
            default_shown="SQLite under the audit directory",
        ),
    )
