"""SQLite as LLM OS's embedded stores use it (storage metadata, the audit log): one way to
open a database and one way to run a write transaction.

Connections are in autocommit mode so that transactions are explicit, usable from the
worker threads `asyncio.to_thread` picks, in WAL mode (readers never block the writer)
with `synchronous=FULL` (a committed transaction survives a power cut, not only a crash).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_database(path: Path, busy_timeout_ms: int = 0) -> sqlite3.Connection:
    """A connection for threads that take turns (the caller serialises its use);
    `busy_timeout_ms` > 0 waits that long for another connection's lock."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    if busy_timeout_ms:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return conn


@contextmanager
def write_transaction(conn: sqlite3.Connection, lock: threading.Lock) -> Iterator[None]:
    """`BEGIN IMMEDIATE` (the write lock up front, so the transaction cannot fail half way
    for want of it) ... COMMIT, or ROLLBACK on any error; `lock` keeps other threads of
    this process off the connection meanwhile."""
    with lock:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
