"""The SQL databases LLM OS's stores run on (storage metadata, the audit log): SQLite in
a file, the embedded default, or a PostgreSQL server that several replicas share.

Both speak the same small dialect here: `?` placeholders, `ON CONFLICT ... DO UPDATE`,
and the column types `INTEGER` (64-bit), `REAL`, `TEXT`, `BLOB`, which `schema()` turns
into PostgreSQL's. A write transaction is exclusive across every process using the
database — SQLite's `BEGIN IMMEDIATE`, PostgreSQL's transaction-scoped advisory lock —
so logic that reads then writes (the next version number, the audit chain's head) is
correct with any number of replicas, exactly as it is with one.

A connection is used by one thread at a time (the owner serialises, as with sqlite3); a
PostgreSQL connection that broke (server restart, failover) is opened again on next use,
and the call that found it broken fails as UNAVAILABLE rather than hang or corrupt.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from llmos.config import Secret
from llmos.errors import Unavailable
from llmos.sqlite import open_database, write_transaction
from llmos.trust import url_with_credentials

POSTGRES_SCHEMES = ("postgresql", "postgres")

#: PostgreSQL's names for the types schemas are written with
_POSTGRES_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "BLOB": "BYTEA"}
_TYPE_WORDS = re.compile(r"\b(INTEGER|REAL|BLOB)\b")


class Cursor(Protocol):
    """What a statement returns: rows, and how many rows a change touched."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int = ..., /) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The part of `sqlite3.Connection` the stores use; a PostgreSQL connection is adapted
    to it (see `PostgresConnection`)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, rows: Any, /) -> Any: ...


class Database(ABC):
    """One connection to a store's database and its lock."""

    #: where it is, safe to show (never a password)
    where: str

    def schema(self, text: str) -> str:
        """`text` (SQLite types) in this database's types."""
        return text

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Connection]:
        """An exclusive write transaction: committed on exit, rolled back on any error."""

    @abstractmethod
    def reading(self) -> AbstractContextManager[Connection]:
        """The connection, to read from, while no other thread of this process uses it."""

    @abstractmethod
    def snapshot(self) -> AbstractContextManager[Connection]:
        """A read-only transaction: every read in it sees the database as it was when it
        began, while writers go on (a long verification of the audit log)."""

    def create(self, schema: str) -> None:
        """Create the tables and indexes of `schema` (statements separated by `;`) that do
        not exist yet."""
        with self.transaction() as conn:
            for statement in self.schema(schema).split(";"):
                if statement.strip():
                    conn.execute(statement)

    def one(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        with self.reading() as conn:
            row = conn.execute(sql, args).fetchone()
            return tuple(row) if row is not None else None

    def all(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.reading() as conn:
            return [tuple(r) for r in conn.execute(sql, args).fetchall()]

    @abstractmethod
    def close(self) -> None: ...


class SqliteDatabase(Database):
    """A SQLite file in WAL mode (see llmos.sqlite)."""

    def __init__(self, path: Path, busy_timeout_ms: int = 0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.where = str(path)
        self._conn = open_database(path, busy_timeout_ms)
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with write_transaction(self._conn, self._lock):
            yield self._conn

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self._lock:
            yield self._conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        with self._lock:
            self._conn.execute("BEGIN")  # WAL: the snapshot is taken at the first read
            try:
                yield self._conn
            finally:
                self._conn.execute("ROLLBACK")

    def create(self, schema: str) -> None:
        self._conn.executescript(schema)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class PostgresConnection:
    """A psycopg connection that takes SQLite's `?` placeholders."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        cursor: Cursor = self.raw.execute(_placeholders(sql), parameters or None)
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], /) -> Any:
        with self.raw.cursor() as cursor:
            cursor.executemany(_placeholders(sql), rows)


def _placeholders(sql: str) -> str:
    """`?` as psycopg's `%s` (the stores' SQL has no `%` and no `?` inside literals)."""
    return sql.replace("?", "%s")


class PostgresDatabase(Database):
    """A PostgreSQL database; `lock_key` names this store's advisory write lock."""

    def __init__(self, url: Secret[str], lock_key: int, connect_timeout_s: float = 10.0) -> None:
        self._url = url
        parts = urlsplit(url.reveal())
        self.where = f"postgresql://{parts.hostname}:{parts.port or 5432}{parts.path}"
        self._lock_key = lock_key
        self._timeout = connect_timeout_s
        self._lock = threading.Lock()
        self._conn: PostgresConnection | None = None
        with self._lock:
            self._open()

    def schema(self, text: str) -> str:
        return _TYPE_WORDS.sub(lambda m: _POSTGRES_TYPES[m.group(1)], text)

    def _open(self) -> PostgresConnection:
        import psycopg  # only where PostgreSQL is configured

        if self._conn is not None and not self._conn.raw.closed and not self._conn.raw.broken:
            return self._conn
        try:
            raw = psycopg.connect(
                self._url.reveal(), autocommit=True, connect_timeout=max(1, int(self._timeout))
            )
        except psycopg.OperationalError as exc:
            raise Unavailable(f"cannot reach the database at {self.where}") from exc
        self._conn = PostgresConnection(raw)
        return self._conn

    @contextmanager
    def _using(self, begin: str = "") -> Iterator[Connection]:
        """The connection, while no other thread uses it; inside a transaction opened by
        `begin` unless it is empty. A connection lost midway is UNAVAILABLE (and opened
        again by the next call)."""
        import psycopg

        with self._lock:
            conn = self._open()
            try:
                if not begin:
                    yield conn
                    return
                with conn.raw.transaction():
                    conn.execute(begin, (self._lock_key,) if "?" in begin else ())
                    yield conn
            except psycopg.OperationalError as exc:
                raise Unavailable(f"the database at {self.where} did not answer") from exc

    def transaction(self) -> AbstractContextManager[Connection]:
        return self._using("SELECT pg_advisory_xact_lock(?)")

    def reading(self) -> AbstractContextManager[Connection]:
        return self._using()

    def snapshot(self) -> AbstractContextManager[Connection]:
        return self._using("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.raw.close()
                self._conn = None


def service_database_url(url: str, secrets_dir: Path, service: str) -> Secret[str]:
    """The URL `service` connects with: `url` itself when it carries credentials (the
    operator's choice), else with the service's own role from
    `<secrets_dir>/postgres/<service>.json`; ValueError naming that file, never its content."""
    return url_with_credentials(Secret(url), secrets_dir / "postgres", service)


def copy_tables(source: Database, target: Database, tables: Mapping[str, Sequence[str]]) -> int:
    """Copy every row of `tables` (name -> columns) from `source` into the same, empty
    tables of `target`: read in one transaction (a consistent snapshot), written in one
    (all or nothing), in either direction — a backup from PostgreSQL into a SQLite file,
    a restore the other way. Returns the rows copied."""
    copied: dict[str, list[tuple[Any, ...]]] = {}
    with source.transaction() as conn:
        for table, columns in tables.items():
            sql = f"SELECT {', '.join(columns)} FROM {table}"
            copied[table] = [tuple(r) for r in conn.execute(sql).fetchall()]
    with target.transaction() as conn:
        for table, columns in tables.items():
            if copied[table]:
                marks = ", ".join("?" * len(columns))
                conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", copied[table]
                )
    return sum(len(rows) for rows in copied.values())
