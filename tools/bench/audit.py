"""`make bench-audit`: sustained audit ingest from JetStream — fetched, redacted, chained,
committed (synchronous=FULL), checkpoints signed every 1,000 records, acknowledged —
against inserting the same rows into the same kind of SQLite database without chaining,
in the same run. Prints one JSON line:

  events_per_s        ingest from JetStream into the chained log (target >= 5,000)
  append_per_s        the chained log alone (no JetStream): where the time goes
  plain_insert_per_s  the same rows, same schema, same transactions, no hashing, no
                      signatures, no dedupe lookups
  chain_cost_ratio    events_per_s / plain_insert_per_s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import threading
import time
from pathlib import Path

import nats

from llmos import subjects
from llmos.auditing import new_record
from llmos.messaging import ensure_streams
from llmos.redaction import RedactionPolicy
from llmos.sqlite import open_database, write_transaction
from llmos.v1 import audit_pb2
from services.audit.chain import Entry, entry_values
from services.audit.ingest import Ingest
from services.audit.keys import signing_key
from services.audit.records import Privacy
from services.audit.store import INSERT, SCHEMA, AuditLog
from tools.devstack.infra import start_nats

BATCH = 1000


def sample(n: int) -> audit_pb2.AuditRecord:
    record = new_record("gateway", "/llmos.v1.Gateway/Generate")
    record.tenant = f"tenant-{n % 10}"
    record.principal = f"user-{n % 97}"
    record.client_id = "bench"
    record.resource = "model/smollm2-135m-instruct"
    record.outcome = "OK" if n % 20 else "PERMISSION_DENIED"
    record.detail = "" if n % 20 else "this call needs scope 'inference'"
    record.latency_ms = 12.5
    record.tokens = 40
    record.client_address = f"ipv4:10.0.{n % 256}.{n % 199}:50000"
    return record


async def publish_all(url: str, records: list[audit_pb2.AuditRecord]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js)
    for start in range(0, len(records), 500):
        await asyncio.gather(
            *(
                js.publish(
                    subjects.audit("gateway"),
                    r.SerializeToString(),
                    headers={"Nats-Msg-Id": r.id},
                )
                for r in records[start : start + 500]
            )
        )
    await nc.close()


async def ingest_all(url: str, directory: Path, count: int) -> float:
    """Seconds the audit ingest takes to commit `count` events already in the stream."""
    nc = await nats.connect(url)
    audit_log = AuditLog(directory / "audit.db", signing_key(directory / "keys"))
    privacy = Privacy(RedactionPolicy(), b"bench-key")
    ingest = Ingest(nc, audit_log, privacy, BATCH, 30.0)
    started = time.perf_counter()
    task = asyncio.create_task(ingest.run())
    while audit_log.head.sequence < count:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    audit_log.close()
    await nc.close()
    return elapsed


def entries(records: list[audit_pb2.AuditRecord]) -> list[Entry]:
    privacy = Privacy(RedactionPolicy(), b"bench-key")
    now = time.time_ns()
    return [privacy.entry(r, now) for r in records]


def append_all(directory: Path, rows: list[Entry]) -> float:
    audit_log = AuditLog(directory / "audit.db", signing_key(directory / "keys"))
    started = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        audit_log.append(rows[start : start + BATCH])
    elapsed = time.perf_counter() - started
    audit_log.close()
    return elapsed


def plain_insert(path: Path, rows: list[Entry]) -> float:
    conn = open_database(path, busy_timeout_ms=10_000)
    conn.executescript(SCHEMA)
    lock = threading.Lock()
    started = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        with write_transaction(conn, lock):
            conn.executemany(
                INSERT,
                [
                    (start + i + 1, *entry_values(row), b"")
                    for i, row in enumerate(rows[start : start + BATCH])
                ],
            )
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=30_000)
    args = parser.parse_args()
    records = [sample(n) for n in range(args.events)]
    with tempfile.TemporaryDirectory(prefix="llmos-bench-audit-") as tmp:
        root = Path(tmp)
        server = start_nats(root / "infra")
        try:
            asyncio.run(publish_all(server.url, records))
            ingest_s = asyncio.run(ingest_all(server.url, root / "ingest", args.events))
        finally:
            server.stop()
        rows = entries(records)
        append_s = append_all(root / "append", rows)
        plain_s = plain_insert(root / "plain.db", rows)
    events_per_s = args.events / ingest_s
    plain_per_s = args.events / plain_s
    print(
        json.dumps(
            {
                "events": args.events,
                "batch": BATCH,
                "events_per_s": round(events_per_s, 1),
                "append_per_s": round(args.events / append_s, 1),
                "plain_insert_per_s": round(plain_per_s, 1),
                "chain_cost_ratio": round(events_per_s / plain_per_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
