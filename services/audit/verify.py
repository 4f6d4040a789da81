"""Re-walking the audit log: every record's hash, every checkpoint's signature, and that
each checkpoint still meets the chain. Reports the first bad record and why.

Runs inside the audit service (`VerifyAudit`, which also knows the head it last wrote, so
even a cut after the newest checkpoint shows) or offline on a copied directory:
`python -m services.audit.verify DIR [--keys DIR] [--witness NATS_URL]` (exit status 0
when valid, 1 when not).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from llmos.database import Connection
from services.audit.chain import ENTRY_COLUMNS, GENESIS, PRUNE, Checkpoint, link
from services.audit.store import CHECKPOINT_COLUMNS, Head

BATCH = 5000


@dataclass(frozen=True)
class Verdict:
    valid: bool
    records_checked: int
    checkpoints_checked: int
    first_bad_sequence: int = 0
    detail: str = ""
    first_sequence: int = 0
    last_sequence: int = 0
    head_hash: bytes = b""
    last_checkpoint_sequence: int = 0


class _Broken(Exception):
    def __init__(self, sequence: int, detail: str) -> None:
        super().__init__(detail)
        self.sequence = sequence
        self.detail = detail


def verify_log(
    conn: Connection,
    keys: dict[str, Ed25519PublicKey],
    live_head: Head | None = None,
    witnessed: Checkpoint | None = None,
) -> Verdict:
    """Check the whole log in `conn` against the trusted `keys`, the writer's head and the
    newest checkpoint the witness holds (each when known)."""
    checkpoints = [
        Checkpoint(*row)
        for row in conn.execute(f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY seq")
    ]
    walk = _Walk(checkpoints)
    try:
        for checkpoint in checkpoints:
            if not checkpoint.valid(keys):
                raise _Broken(
                    checkpoint.sequence,
                    f"checkpoint at record {checkpoint.sequence} does not carry a valid "
                    "signature of a trusted key: it was altered or forged",
                )
        walk.run(conn)
        walk.finish(live_head)
        if witnessed is not None and (found := against_witness(conn, witnessed, keys)):
            raise _Broken(*found)
    except _Broken as broken:
        return walk.verdict(broken.sequence, broken.detail)
    summary = (
        f"{walk.checked} records ({walk.first}-{walk.previous.sequence}) chain correctly "
        f"and match {len(checkpoints)} signed checkpoints"
        if walk.checked
        else "the log holds no records"
    )
    if witnessed is not None:
        summary += f", and the witness's checkpoint at record {witnessed.sequence}"
    return walk.verdict(0, summary)


class _Walk:
    def __init__(self, checkpoints: list[Checkpoint]) -> None:
        self.by_sequence = {c.sequence: c for c in checkpoints}
        self.checkpoints = checkpoints
        self.previous = Head(0, GENESIS)
        self.last_checkpoint = 0  # the last checkpoint met so far
        self.checked = 0
        self.first = 0

    def verdict(self, first_bad: int, detail: str) -> Verdict:
        """What the walk found so far: valid when nothing was bad (`first_bad` 0)."""
        return Verdict(
            first_bad == 0,
            self.checked,
            len(self.checkpoints),
            first_bad,
            detail,
            self.first,
            self.previous.sequence,
            self.previous.hash,
            self.last_checkpoint,
        )

    def run(self, conn: Connection) -> None:
        cursor = conn.execute(
            f"SELECT seq, {', '.join(ENTRY_COLUMNS)}, hash FROM records ORDER BY seq"
        )
        while rows := cursor.fetchmany(BATCH):
            for row in rows:
                self._record(row[0], row[1:-1], row[-1])

    def _start(self, sequence: int) -> None:
        self.first = sequence
        if sequence == 1:
            return
        anchor = self.by_sequence.get(sequence - 1)
        if anchor is None or anchor.kind != PRUNE:
            pruned = max(
                (c.sequence for c in self.checkpoints if c.kind == PRUNE and c.sequence < sequence),
                default=0,
            )
            raise _Broken(
                pruned + 1,
                f"record {pruned + 1} is missing: the log starts at record {sequence} and no "
                "signed prune checkpoint accounts for the records before it",
            )
        self.previous = Head(anchor.sequence, anchor.hash)
        self.last_checkpoint = anchor.sequence

    def _record(self, sequence: int, values: tuple[object, ...], stored: bytes) -> None:
        if not self.checked:
            self._start(sequence)
        expected = self.previous.sequence + 1
        if sequence != expected:
            raise _Broken(
                expected, f"record {expected} is missing: the next one kept is {sequence}"
            )
        computed = link(self.previous.hash, sequence, values)
        if computed != stored:
            raise _Broken(
                sequence,
                f"record {sequence} does not match its hash: a field was modified, or records "
                "were reordered",
            )
        checkpoint = self.by_sequence.get(sequence)
        if checkpoint is not None:
            if checkpoint.hash != computed:
                raise _Broken(
                    self.last_checkpoint + 1,
                    f"records {self.last_checkpoint + 1}-{sequence} were rewritten: the "
                    f"checkpoint signed at record {sequence} holds another hash",
                )
            self.last_checkpoint = sequence
        self.previous = Head(sequence, computed)
        self.checked += 1

    def finish(self, live_head: Head | None) -> None:
        last = self.previous.sequence
        beyond = [c for c in self.checkpoints if c.sequence > last]
        if beyond:
            raise _Broken(
                last + 1,
                f"the log was truncated: it ends at record {last}, but a checkpoint was "
                f"signed at record {beyond[-1].sequence}",
            )
        if live_head is not None and live_head.sequence > last:
            raise _Broken(
                last + 1,
                f"the log was truncated: it ends at record {last}, but the audit service "
                f"wrote through record {live_head.sequence}",
            )
        if (
            live_head is not None
            and live_head.sequence == last
            and live_head.hash != self.previous.hash
        ):
            raise _Broken(
                self.last_checkpoint + 1,
                f"records {self.last_checkpoint + 1}-{last} were rewritten: the audit "
                "service's own head holds another hash",
            )


def against_witness(
    conn: Connection, witnessed: Checkpoint, keys: dict[str, Ed25519PublicKey]
) -> tuple[int, str] | None:
    """Where and why the log no longer holds what the witness's checkpoint vouches for;
    None when it does. That checkpoint's hash commits to every record up to its sequence,
    so comparing the one stored hash finds a rewrite anywhere before it, and a log ending
    before it was cut off, checkpoints and all."""
    at = witnessed.sequence
    if not witnessed.valid(keys):
        return at, (
            f"the witness's checkpoint at record {at} does not carry a valid signature of a "
            "trusted key: it was altered or forged"
        )
    row = conn.execute("SELECT hash FROM records WHERE seq = ?", (at,)).fetchone()
    if row is None:
        pruned = [
            c
            for c in (
                Checkpoint(*r)
                for r in conn.execute(
                    f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE kind = ? AND seq >= ?",
                    (PRUNE, at),
                )
            )
            if c.valid(keys)
        ]
        if pruned:
            return None  # removed for retention, behind a signed prune checkpoint
        last = int(conn.execute("SELECT MAX(seq) FROM records").fetchone()[0] or 0)
        if last < at:
            return last + 1, (
                f"the log was truncated: it ends at record {last}, but the witness holds a "
                f"checkpoint signed at record {at}"
            )
        return at, f"record {at} is missing: the witness holds a checkpoint signed at it"
    if row[0] != witnessed.hash:
        return at, (
            f"record {at} does not hold the hash the witness's checkpoint signed for it: "
            f"records up to {at} were rewritten or replaced"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    from services.audit.keys import trusted_keys
    from services.audit.store import connect

    parser = argparse.ArgumentParser(description="Verify a copy of the audit log offline.")
    parser.add_argument("directory", type=Path, help="the audit directory (audit.db, keys/)")
    parser.add_argument("--keys", type=Path, help="a directory of trusted *.pub files")
    parser.add_argument(
        "--witness",
        metavar="NATS_URL",
        help="also check against the newest checkpoint the JetStream witness holds",
    )
    args = parser.parse_args(argv)
    keys = trusted_keys(args.keys or args.directory / "keys")
    witnessed = None
    if args.witness:
        from services.audit.witness import read_witness

        witnessed = asyncio.run(read_witness(args.witness, keys))
        print(f"witness: record {witnessed.sequence}" if witnessed else "witness: holds none")
    database = connect(args.directory / "audit.db")
    with database.snapshot() as conn:
        verdict = verify_log(conn, keys, witnessed=witnessed)
    database.close()
    print(
        ("valid: " if verdict.valid else f"INVALID at record {verdict.first_bad_sequence}: ")
        + verdict.detail
    )
    return 0 if verdict.valid else 1


if __name__ == "__main__":
    sys.exit(main())
