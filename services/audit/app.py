"""The audit service: ingest from JetStream, sign checkpoints on a clock, prune for
retention, and answer VerifyAudit and QueryAudit.

It is the log's only writer. Tenant scoping is the gateway's job (it stamps the caller's
tenant on every query of a non-admin), as for every internal service.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import grpc

from llmos.config import ServiceSettings
from llmos.database import PostgresDatabase, service_database_url
from llmos.errors import InvalidArgument, Unavailable
from llmos.lease import Lease
from llmos.runner import ServiceContext
from llmos.v1 import audit_pb2, audit_pb2_grpc
from services.audit.chain import Checkpoint, key_id
from services.audit.ingest import STANDBY_POLL_S, Ingest
from services.audit.keys import pseudonym_key, signing_key, trusted_keys
from services.audit.metrics import LagAlarm
from services.audit.options import AuditOptions
from services.audit.records import Privacy, to_message
from services.audit.store import AuditLog, Filters, Head, Opener, connect
from services.audit.verify import Verdict, verify_log
from services.audit.witness import Witness

log = logging.getLogger("llmos.audit")

WRITER_KEY = "llmos:audit:writer"
WITNESS_INTERVAL_S = 1.0
MAX_PAGE = 1000
DEFAULT_PAGE = 100


def encode_cursor(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"after:{sequence}".encode()).decode().rstrip("=")


def decode_cursor(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        word, _, number = text.partition(":")
        sequence = int(number)
        if word != "after" or sequence < 1:
            raise ValueError(text)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(
            "page_token", "is not a token this service gave out (pass next_page_token as is)"
        ) from None
    return sequence


def filters_of(request: audit_pb2.QueryAuditRequest, privacy: Privacy) -> Filters:
    since = request.since.ToNanoseconds() if request.HasField("since") else 0
    until = request.until.ToNanoseconds() if request.HasField("until") else 0
    if since and until and until <= since:
        raise InvalidArgument("until", "must be later than since")
    for field in ("tenant", "principal", "action", "resource", "outcome", "source"):
        if len(getattr(request, field)) > 512:
            raise InvalidArgument(field, "is longer than 512 characters")
    principal = request.principal
    if principal and not principal.endswith("*"):
        principal = privacy.identity(principal)
    return Filters(
        since_ns=since,
        until_ns=until,
        tenant=request.tenant,
        principal=principal,
        action=request.action,
        resource=request.resource,
        outcome=request.outcome,
        source=request.source,
    )


class AuditServicer(audit_pb2_grpc.AuditServicer):  # type: ignore[misc]
    def __init__(
        self, audit_log: AuditLog, privacy: Privacy, keys_dir: Path, witness: Witness
    ) -> None:
        self._log = audit_log
        self._privacy = privacy
        self._keys_dir = keys_dir
        self._witness = witness

    async def VerifyAudit(
        self, request: audit_pb2.VerifyAuditRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.VerifyAuditResponse:
        head = self._log.head  # read first: the log and the witness may only move on
        try:
            witnessed = await self._witness.newest()
        except Exception as exc:  # nats raises several unrelated types when unreachable
            raise Unavailable(
                f"cannot read the audit log's witness on JetStream ({exc}); try again"
            ) from exc
        verdict = await asyncio.to_thread(self._verify, head, witnessed)
        return audit_pb2.VerifyAuditResponse(
            valid=verdict.valid,
            records_checked=verdict.records_checked,
            first_bad_sequence=verdict.first_bad_sequence,
            detail=verdict.detail,
            checkpoints_checked=verdict.checkpoints_checked,
            first_sequence=verdict.first_sequence,
            last_sequence=verdict.last_sequence,
            head_hash=verdict.head_hash.hex(),
            last_checkpoint_sequence=verdict.last_checkpoint_sequence,
            witnessed_sequence=witnessed.sequence if witnessed else 0,
        )

    def _verify(self, head: Head, witnessed: Checkpoint | None) -> Verdict:
        database = self._log.open()
        try:
            with database.snapshot() as conn:  # one consistent view while ingest goes on
                return verify_log(conn, trusted_keys(self._keys_dir), head, witnessed)
        finally:
            database.close()

    async def QueryAudit(
        self, request: audit_pb2.QueryAuditRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.QueryAuditResponse:
        if not 0 <= request.page_size <= MAX_PAGE:
            raise InvalidArgument(
                "page_size", f"must be between 1 and {MAX_PAGE} (0: {DEFAULT_PAGE})"
            )
        size = request.page_size or DEFAULT_PAGE
        filters = filters_of(request, self._privacy)
        after = decode_cursor(request.page_token)
        rows = await asyncio.to_thread(
            self._log.query, filters, after, size + 1, request.newest_first
        )
        response = audit_pb2.QueryAuditResponse(records=[to_message(r) for r in rows[:size]])
        if len(rows) > size:
            response.next_page_token = encode_cursor(rows[size - 1].sequence)
        return response


async def _every(
    interval_s: float,
    action: Callable[[], Awaitable[object]],
    what: str,
    first_s: float | None = None,
) -> None:
    """Run `action` every `interval_s` (the first time after `first_s`), logging failures."""
    delay = interval_s if first_s is None else first_s
    while True:
        await asyncio.sleep(delay)
        delay = interval_s
        try:
            await action()
        except Exception:
            log.exception(f"audit {what} failed; trying again later")


#: the advisory lock that makes an audit write transaction exclusive across instances
#: ("llmos" and 2: audit), beside the writer's lease
WRITE_LOCK = 0x6C6C6D6F7302


def log_database(options: AuditOptions, root: Path, settings: ServiceSettings) -> Opener:
    """How to open the log's database: PostgreSQL when configured, else `<root>/audit.db`."""
    if not options.database_url:
        return partial(connect, root / "audit.db")
    url = service_database_url(options.database_url, settings.secrets_dir, "audit")
    return partial(PostgresDatabase, url, WRITE_LOCK, settings.connect_timeout_s)


async def attach(ctx: ServiceContext, server: grpc.aio.Server, stack: AsyncExitStack) -> list[str]:
    """Open the log, start ingesting, and serve the API."""
    options: AuditOptions = ctx.options
    root = options.root(ctx.settings.data_dir)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys_dir = root / "keys"
    key = await asyncio.to_thread(signing_key, keys_dir)
    privacy = Privacy(options.policy, await asyncio.to_thread(pseudonym_key, keys_dir))
    audit_log = await asyncio.to_thread(
        AuditLog, log_database(options, root, ctx.settings), key, options.checkpoint_records
    )
    stack.callback(audit_log.close)

    async def checkpoint() -> None:
        if lease.held:
            await asyncio.to_thread(audit_log.checkpoint)

    async def witness_checkpoints() -> None:
        if lease.held:
            await witness.publish_pending()

    async def prune() -> None:
        if options.retention_s > 0 and lease.held:
            cutoff = time.time_ns() - int(options.retention_s * 1e9)
            removed = await asyncio.to_thread(audit_log.prune, cutoff)
            if removed:
                log.info("audit records pruned for retention", extra={"count": removed})

    witness = Witness(ctx.js, audit_log, key.public_key())
    lease = Lease(ctx.redis, WRITER_KEY, ctx.instance.instance_id, ctx.settings.heartbeat_s)
    alarm = LagAlarm(ctx.events, options.lag_alert_s)
    ingest = Ingest(ctx.nats, audit_log, privacy, options.batch, options.ack_wait_s, lease, alarm)
    await ingest.subscribe()  # fail at start, not later, if the stream is unusable
    tasks = [
        asyncio.create_task(ingest.run(), name="audit-ingest"),
        asyncio.create_task(
            _every(options.checkpoint_s, checkpoint, "checkpoint"), name="audit-checkpoint"
        ),
        asyncio.create_task(
            _every(options.prune_interval_s, prune, "pruning", first_s=STANDBY_POLL_S + 1),
            name="audit-prune",
        ),
        asyncio.create_task(
            _every(WITNESS_INTERVAL_S, witness_checkpoints, "witness"), name="audit-witness"
        ),
    ]

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if lease.held:
            await asyncio.to_thread(audit_log.checkpoint)  # what was recorded is covered
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(witness.publish_pending(), WITNESS_INTERVAL_S * 2)
            await lease.release()

    stack.push_async_callback(stop)
    servicer = AuditServicer(audit_log, privacy, keys_dir, witness)
    audit_pb2_grpc.add_AuditServicer_to_server(servicer, server)
    log.info(
        "audit log open",
        extra={"last_sequence": audit_log.head.sequence, "signing_key": key_id(key.public_key())},
    )
    return [audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name]
