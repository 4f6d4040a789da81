"""`llmos audit query` (JSON Lines, a page at a time, to stdout or a file) and
`llmos audit verify` (exit status 0 when the log is intact, 1 when it is not)."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from llmos.errors import InvalidArgument
from llmos.v1 import audit_pb2, audit_pb2_grpc

EXIT_OK, EXIT_INVALID = 0, 1
PAGE = 1000
AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_time(text: str, field: str) -> Timestamp:
    """ISO 8601 (`2026-11-28T09:00:00Z`; no zone means UTC) or an age (`90s`, `15m`, `2h`,
    `7d` ago)."""
    stamp = Timestamp()
    if match := AGO.match(text.strip()):
        stamp.FromNanoseconds(
            time.time_ns() - int(float(match[1]) * UNIT_S[match[2]] * 1_000_000_000)
        )
        return stamp
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            field, f"{text!r} is neither an ISO 8601 time nor an age such as 15m, 2h or 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    stamp.FromDatetime(moment)
    return stamp


def query_request(args: argparse.Namespace) -> audit_pb2.QueryAuditRequest:
    request = audit_pb2.QueryAuditRequest(
        tenant=args.tenant,
        principal=args.principal,
        action=args.action,
        resource=args.resource,
        outcome=args.outcome,
        source=args.source,
        newest_first=args.newest_first,
    )
    if args.since:
        request.since.CopyFrom(parse_time(args.since, "--since"))
    if args.until:
        request.until.CopyFrom(parse_time(args.until, "--until"))
    return request


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


def json_line(record: audit_pb2.StoredAuditRecord) -> str:
    """One record as a line of JSON: its fields flattened beside sequence, hash, recorded."""
    body: dict[str, Any] = json_format.MessageToDict(
        record.record, preserving_proto_field_name=True
    )
    body.update(sequence=record.sequence, recorded=record.recorded.ToJsonString(), hash=record.hash)
    return json.dumps(body, ensure_ascii=False, sort_keys=True)


def cmd_audit(args: argparse.Namespace) -> int:
    stub = audit_pb2_grpc.AuditStub(args.channel(args))
    if args.audit_command == "verify":
        verdict = stub.VerifyAudit(audit_pb2.VerifyAuditRequest(), timeout=max(args.timeout, 600))
        if verdict.valid:
            print(f"valid: {verdict.detail}; head {verdict.head_hash or '-'}")
            return EXIT_OK
        print(f"INVALID at record {verdict.first_bad_sequence}: {verdict.detail}")
        return EXIT_INVALID
    request = query_request(args)
    with contextlib.ExitStack() as stack:
        out: TextIO = (
            stack.enter_context(open(args.output, "w", encoding="utf-8"))
            if args.output
            else sys.stdout
        )
        count = 0
        for record in records(stub, request, args.limit, args.timeout):
            out.write(json_line(record) + "\n")
            count += 1
    if args.output:
        print(f"{count} records written to {args.output}", file=sys.stderr)
    return EXIT_OK


def add_commands(commands: Any) -> None:
    """Wire `llmos audit ...` into the parser."""
    audit = commands.add_parser("audit", help="query (JSON Lines) or verify the audit log")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    query = actions.add_parser("query", help="records matching filters, as JSON Lines")
    query.add_argument("--since", help="ISO 8601 time or an age such as 15m, 2h, 7d")
    query.add_argument("--until", help="ISO 8601 time or an age")
    query.add_argument("--tenant", default="", help="admins of the system tenant only")
    query.add_argument("--principal", default="")
    query.add_argument("--action", default="", help='exact, or a prefix ending in "*"')
    query.add_argument("--resource", default="", help='exact, or a prefix ending in "*"')
    query.add_argument("--outcome", default="", help="OK or a gRPC status name")
    query.add_argument("--source", default="", help="gateway, storage, scheduler, trainer")
    query.add_argument("--limit", type=int, default=100, help="at most this many (0: all)")
    query.add_argument("--newest-first", action="store_true")
    query.add_argument("--output", help="write the JSON Lines to this file (export)")
    actions.add_parser("verify", help="re-walk the hash chain and signed checkpoints")
    audit.set_defaults(run=cmd_audit)
