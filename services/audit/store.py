"""The append-only audit log in SQLite (WAL, synchronous=FULL; the embedded default) or
PostgreSQL (shared by the active writer and its standbys, llmos.database): records chained
by hash, signed checkpoints, retention pruning and filtered, paginated reads.

One writer appends; the chain's head (last sequence number and hash) lives in memory and
in the last row. A batch is one transaction: every new record of it is committed, with
its hash, or none is, so the ingest may acknowledge a batch exactly when it committed.
Event ids are unique: a redelivered event is recognised and recorded once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from llmos.database import Connection, Database, SqliteDatabase
from services.audit.chain import (
    ENTRY_COLUMNS,
    GENESIS,
    PERIODIC,
    PRUNE,
    Checkpoint,
    Entry,
    entry_values,
    link,
)


def _column(name: str) -> str:
    kind = "INTEGER" if name.endswith(("_ns", "_us")) or name == "tokens" else "TEXT"
    return f"{name} {kind} NOT NULL"


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    {", ".join(_column(c) for c in ENTRY_COLUMNS)},
    hash BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS records_event ON records(event_id);
CREATE INDEX IF NOT EXISTS records_tenant ON records(tenant, seq);
CREATE INDEX IF NOT EXISTS records_principal ON records(principal, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    time_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature BLOB NOT NULL
);
"""

INSERT = (
    f"INSERT INTO records (seq, {', '.join(ENTRY_COLUMNS)}, hash) "
    f"VALUES ({', '.join('?' * (len(ENTRY_COLUMNS) + 2))})"
)
CHECKPOINT_COLUMNS = "seq, hash, time_ns, kind, key_id, signature"
SIGN = (
    f"INSERT INTO checkpoints ({CHECKPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(seq) DO UPDATE SET hash=excluded.hash, time_ns=excluded.time_ns, "
    "kind=excluded.kind, key_id=excluded.key_id, signature=excluded.signature"
)
T = TypeVar("T")

#: opens a new connection to the audit database (the writer and the readers each hold one)
Opener = Callable[[], Database]


def connect(path: Path) -> SqliteDatabase:
    """A connection to a SQLite audit database; the writer, the readers and a standby
    sharing the directory wait for each other's locks rather than fail."""
    return SqliteDatabase(path, busy_timeout_ms=10_000)


@dataclass(frozen=True)
class Head:
    sequence: int
    hash: bytes


@dataclass(frozen=True)
class Filters:
    """What a query matches; empty strings and zero times match everything."""

    since_ns: int = 0
    until_ns: int = 0
    #: always exact: it is the boundary between tenants, and a non-admin's comes from
    #: their token, so no text in it may widen what matches
    tenant: str = ""
    principal: str = ""
    action: str = ""  # exact, or a prefix ending in "*"
    resource: str = ""
    outcome: str = ""
    source: str = ""


@dataclass(frozen=True)
class StoredRecord:
    sequence: int
    entry: Entry
    hash: bytes


def _match(column: str, value: str, where: list[str], args: list[object]) -> None:
    if not value:
        return
    if value.endswith("*") and column != "tenant":
        prefix = value[:-1]
        where.append(f"substr({column}, 1, CAST(? AS INTEGER)) = ?")
        args.extend([len(prefix), prefix])
    else:
        where.append(f"{column} = ?")
        args.append(value)


class AuditLog:
    """The audit database of one audit service (the only writer)."""

    def __init__(
        self, database: Path | Opener, key: Ed25519PrivateKey, checkpoint_every: int = 1000
    ) -> None:
        self.open: Opener = (lambda: connect(database)) if isinstance(database, Path) else database
        self._key = key
        self._every = checkpoint_every
        self._write = self.open()
        self._write.create(SCHEMA)
        self._read = self.open()
        with self._write.transaction() as conn:
            self.head = self._stored_head(conn)

    @staticmethod
    def _stored_head(conn: Connection) -> Head:
        """The last record (or the prune checkpoint standing for it). Read again in each
        write transaction, so whoever appends chains to what is really there — even when
        another instance wrote meanwhile (a standby sharing the database)."""
        row = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None:
            return Head(row[0], bytes(row[1]))
        anchor = conn.execute(
            "SELECT seq, hash FROM checkpoints WHERE kind = ? ORDER BY seq DESC LIMIT 1", (PRUNE,)
        ).fetchone()
        return Head(anchor[0], bytes(anchor[1])) if anchor else Head(0, GENESIS)

    @staticmethod
    def _last_checkpoint(conn: Connection) -> int:
        return int(conn.execute("SELECT MAX(seq) FROM checkpoints").fetchone()[0] or 0)

    def close(self) -> None:
        self._write.close()
        self._read.close()

    def _transaction(self) -> AbstractContextManager[Connection]:
        return self._write.transaction()

    # -- writing -----------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> int:
        """Chain and commit the entries not recorded before; return how many were new."""
        if not entries:
            return 0
        with self._transaction() as conn:
            known = self._known_ids(conn, [e.event_id for e in entries])
            head = self._stored_head(conn)
            rows = []
            for entry in entries:
                if entry.event_id in known:
                    continue
                known.add(entry.event_id)
                values = entry_values(entry)
                sequence = head.sequence + 1
                head = Head(sequence, link(head.hash, sequence, values))
                rows.append((sequence, *values, head.hash))
            conn.executemany(INSERT, rows)
            if head.sequence - self._last_checkpoint(conn) >= self._every:
                self._sign(conn, PERIODIC, head)
        self.head = head
        return len(rows)

    @staticmethod
    def _known_ids(conn: Connection, ids: list[str]) -> set[str]:
        known: set[str] = set()
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            found = conn.execute(
                f"SELECT event_id FROM records WHERE event_id IN ({','.join('?' * len(part))})",
                part,
            )
            known.update(row[0] for row in found)
        return known

    def _sign(self, conn: Connection, kind: str, head: Head) -> Checkpoint:
        checkpoint = Checkpoint.sign(self._key, kind, head.sequence, head.hash, time.time_ns())
        conn.execute(SIGN, checkpoint.row())
        return checkpoint

    def checkpoint(self) -> Checkpoint | None:
        """Sign the head if records arrived since the last checkpoint."""
        with self._transaction() as conn:
            head = self._stored_head(conn)
            if head.sequence <= self._last_checkpoint(conn):
                return None
            return self._sign(conn, PERIODIC, head)

    def prune(self, before_ns: int) -> int:
        """Remove the records committed before `before_ns`, behind a signed `prune`
        checkpoint at the last one removed; return how many were removed."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT seq, hash FROM records WHERE recorded_ns < ? ORDER BY seq DESC LIMIT 1",
                (before_ns,),
            ).fetchone()
            if row is None:
                return 0
            anchor = Head(row[0], bytes(row[1]))
            self._sign(conn, PRUNE, anchor)
            removed = conn.execute("DELETE FROM records WHERE seq <= ?", (anchor.sequence,))
            conn.execute("DELETE FROM checkpoints WHERE seq < ?", (anchor.sequence,))
            return removed.rowcount

    # -- reading -----------------------------------------------------------------------

    def reading(self, read: Callable[[Connection], T]) -> T:
        """`read` run on the log's reading connection (shared by queries, one at a time)."""
        with self._read.reading() as conn:
            return read(conn)

    def checkpoints_after(self, sequence: int) -> list[Checkpoint]:
        """The checkpoints signed past record `sequence`, oldest first."""
        rows = self._read.all(
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE seq > ? ORDER BY seq", sequence
        )
        return [Checkpoint(r[0], bytes(r[1]), r[2], r[3], r[4], bytes(r[5])) for r in rows]

    def count(self) -> int:
        row = self._read.one("SELECT COUNT(*) FROM records")
        return int(row[0]) if row else 0

    def query(
        self, filters: Filters, after: int, limit: int, newest_first: bool = False
    ) -> list[StoredRecord]:
        """Up to `limit` matching records past sequence `after` (0: from the start) in
        sequence order, or before it with `newest_first` (0: from the end)."""
        where: list[str] = []
        args: list[object] = []
        if after:
            where.append("seq < ?" if newest_first else "seq > ?")
            args.append(after)
        if filters.since_ns:
            where.append("time_ns >= ?")
            args.append(filters.since_ns)
        if filters.until_ns:
            where.append("time_ns < ?")
            args.append(filters.until_ns)
        for column in ("tenant", "principal", "action", "resource", "outcome", "source"):
            _match(column, getattr(filters, column), where, args)
        sql = f"SELECT seq, {', '.join(ENTRY_COLUMNS)}, hash FROM records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        args.append(limit)
        rows = self._read.all(sql, *args)
        return [StoredRecord(row[0], Entry(*row[1:-1]), bytes(row[-1])) for row in rows]
