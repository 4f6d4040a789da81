"""The audit log's witness outside its own database: each signed checkpoint is also
published on JetStream (`llmos.witness.audit.<key id>`, stream LLMOS_WITNESS).

The log keeps its checkpoints beside its records, so whoever can write that file can cut
off the newest records together with their checkpoints, and the file alone no longer
shows it. The witness's newest checkpoint survives such an edit and a restart; its hash
commits to every record up to its sequence, so checking the log against it finds a
truncation, or a rewrite of anything it covers.

The witness only moves forward along one chain: when the log no longer holds what the
witness vouches for, nothing more is published over it (its checkpoint stays as the
evidence), the service logs an error, and VerifyAudit reports it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import asdict, fields
from functools import partial

import nats
import nats.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from llmos import subjects
from llmos.v1 import audit_pb2
from services.audit.chain import Checkpoint, key_id
from services.audit.store import AuditLog
from services.audit.verify import against_witness

log = logging.getLogger("llmos.audit.witness")

PUBLISH_TIMEOUT_S = 5.0


def to_message(checkpoint: Checkpoint) -> audit_pb2.AuditCheckpoint:
    return audit_pb2.AuditCheckpoint(**asdict(checkpoint))  # the same field names


def from_message(data: bytes) -> Checkpoint:
    """The checkpoint a witness message holds; an unreadable one becomes a checkpoint no
    key signed, so it is reported as forged rather than ignored."""
    try:
        message = audit_pb2.AuditCheckpoint.FromString(data)
    except DecodeError:
        return Checkpoint(0, b"", 0, "", "", b"")
    return Checkpoint(**{field.name: getattr(message, field.name) for field in fields(Checkpoint)})


async def newest_witnessed(js: JetStreamContext, key: str) -> Checkpoint | None:
    """The newest checkpoint the witness holds for the log signed by `key` (None: none)."""
    try:
        message = await js.get_last_msg(subjects.WITNESS_STREAM, subjects.audit_witness(key))
    except NotFoundError:
        return None
    return from_message(message.data or b"")


async def read_witness(url: str, keys: Iterable[str]) -> Checkpoint | None:
    """For a verifier outside the service: the newest checkpoint witnessed for any of the
    logs signed by `keys`."""
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        found = [await newest_witnessed(nc.jetstream(), key) for key in keys]
    finally:
        await nc.close()
    return max((c for c in found if c is not None), key=lambda c: c.sequence, default=None)


class Witness:
    """Publishes one log's checkpoints and reads back the newest."""

    def __init__(self, js: JetStreamContext, audit_log: AuditLog, key: Ed25519PublicKey):
        self._js = js
        self._log = audit_log
        self._key = key_id(key)
        # what it publishes is signed by this log's own key, so that key alone is trusted
        self._keys = {self._key: key}
        self.subject = subjects.audit_witness(self._key)
        self._reported = ""  # the contradiction last logged, to log each one once
        self._unreachable = False

    async def newest(self) -> Checkpoint | None:
        """The newest checkpoint the witness holds (None: it holds none yet)."""
        return await newest_witnessed(self._js, self._key)

    async def publish_pending(self) -> int:
        """Publish the checkpoints signed since the witness's newest, unless the log no
        longer holds that one; return how many were published."""
        try:
            published = await self._publish_pending()
        except (TimeoutError, nats.errors.Error) as exc:
            if not self._unreachable:
                log.warning(
                    "cannot reach the audit witness on JetStream; checkpoints wait in the log",
                    extra={"error": str(exc) or type(exc).__name__},
                )
            self._unreachable = True
            return 0
        if self._unreachable:
            log.info("audit witness reachable again")
        self._unreachable = False
        return published

    async def _publish_pending(self) -> int:
        # read each time, not remembered: another instance may have published meanwhile
        held = await self.newest()
        if held is not None:
            found = await asyncio.to_thread(
                self._log.reading, partial(against_witness, witnessed=held, keys=self._keys)
            )
            if found:
                _, contradiction = found
                if contradiction != self._reported:
                    log.error(
                        "the audit log no longer holds what its witness vouches for; the "
                        "witness keeps that checkpoint as evidence and takes no newer ones",
                        extra={"detail": contradiction, "witnessed": held.sequence},
                    )
                    self._reported = contradiction
                return 0
        pending = await asyncio.to_thread(self._log.checkpoints_after, held.sequence if held else 0)
        for checkpoint in pending:
            await self._js.publish(
                self.subject,
                to_message(checkpoint).SerializeToString(),
                timeout=PUBLISH_TIMEOUT_S,
                headers={"Nats-Msg-Id": f"{checkpoint.key_id}:{checkpoint.signature[:16].hex()}"},
            )
        return len(pending)
