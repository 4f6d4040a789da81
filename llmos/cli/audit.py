"""`llmos audit query` (JSON Lines, a page at a time, to stdout or a file) and
`llmos audit verify` (exit status 0 when the log is intact, 1 when it is not)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from google.protobuf.timestamp_pb2 import Timestamp

from llmos.audit_text import json_line, parse_time_ns
from llmos.cli.connection import connection
from llmos.cli.errors import EXIT_FAILED
from llmos.keyfiles import open_private
from llmos.v1 import audit_pb2, audit_pb2_grpc

app = typer.Typer(help="Query (JSON Lines) or verify the audit log.", no_args_is_help=True)

PAGE = 1000


def parse_time(text: str, field: str) -> Timestamp:
    """ISO 8601 (`2026-11-28T09:00:00Z`; no zone means UTC) or an age (`90s`, `15m`, `2h`,
    `7d` ago)."""
    stamp = Timestamp()
    stamp.FromNanoseconds(parse_time_ns(text, field, time.time_ns()))
    return stamp


def records(
    stub: audit_pb2_grpc.AuditStub, request: audit_pb2.QueryAuditRequest, limit: int, timeout: float
) -> Iterator[audit_pb2.StoredAuditRecord]:
    """Up to `limit` matching records (0: all), following the pages."""
    given = 0
    while True:
        request.page_size = min(PAGE, limit - given) if limit else PAGE
        page = stub.QueryAudit(request, timeout=timeout)
        for record in page.records:
            yield record
            given += 1
        if not page.next_page_token or (limit and given >= limit):
            return
        request.page_token = page.next_page_token


def _opt(help_text: str) -> Any:
    return typer.Option(help=help_text)


@app.command()
def query(
    ctx: typer.Context,
    since: Annotated[str | None, _opt("ISO 8601 time or an age such as 15m, 2h, 7d")] = None,
    until: Annotated[str | None, _opt("ISO 8601 time or an age")] = None,
    tenant: Annotated[str, _opt("only this tenant (admins of the system tenant)")] = "",
    principal: Annotated[str, _opt("only this client or user")] = "",
    action: Annotated[str, _opt('the RPC or action: exact, or a prefix ending in "*"')] = "",
    resource: Annotated[str, _opt('exact, or a prefix ending in "*"')] = "",
    outcome: Annotated[str, _opt("OK or a gRPC status name")] = "",
    source: Annotated[str, _opt("gateway, storage, scheduler or trainer")] = "",
    limit: Annotated[int, _opt("at most this many records (0: all)")] = 100,
    newest_first: Annotated[
        bool, typer.Option("--newest-first", help="newest records first")
    ] = False,
    output: Annotated[
        Path | None, _opt("write the JSON Lines to this file (an export, readable by you only)")
    ] = None,
) -> None:
    """Records matching the filters, as JSON Lines (needs scope audit:read)."""
    request = audit_pb2.QueryAuditRequest(
        tenant=tenant, principal=principal, action=action, resource=resource,
        outcome=outcome, source=source, newest_first=newest_first,
    )  # fmt: skip
    if since:
        request.since.CopyFrom(parse_time(since, "--since"))
    if until:
        request.until.CopyFrom(parse_time(until, "--until"))
    conn = connection(ctx)
    stub = conn.audit_stub()
    with contextlib.ExitStack() as stack:
        out: TextIO = stack.enter_context(open_private(output)) if output else sys.stdout
        count = 0
        for record in records(stub, request, limit, conn.timeout):
            out.write(json_line(record) + "\n")
            count += 1
    if output:
        print(f"{count} records written to {output}", file=sys.stderr)


@app.command()
def verify(ctx: typer.Context) -> None:
    """Check the log is intact: exit status 0 if so, 1 naming the first bad record.

    Re-walks the hash chain, the signed checkpoints and the witness (system tenant)."""
    conn = connection(ctx)
    verdict = conn.audit_stub().VerifyAudit(
        audit_pb2.VerifyAuditRequest(), timeout=max(conn.timeout, 600)
    )
    if verdict.valid:
        print(f"valid: {verdict.detail}; head {verdict.head_hash or '-'}")
        return
    print(f"INVALID at record {verdict.first_bad_sequence}: {verdict.detail}")
    raise typer.Exit(EXIT_FAILED)
