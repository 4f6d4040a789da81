"""Audit records and times as people and files write them, shared by `llmos audit` and
the console's audit page so both read the same times and export the same lines."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format

from llmos.errors import InvalidArgument
from llmos.v1 import audit_pb2

AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_time_ns(text: str, field: str, now_ns: int) -> int:
    """Nanoseconds since the epoch of `text`: ISO 8601 (`2026-11-28T09:00:00Z`; no zone
    means UTC) or an age (`90s`, `15m`, `2h`, `7d` before `now_ns`)."""
    if match := AGO.match(text.strip()):
        return now_ns - int(float(match[1]) * UNIT_S[match[2]] * 1_000_000_000)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            field, f"{text!r} is neither an ISO 8601 time nor an age such as 15m, 2h or 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def json_line(record: audit_pb2.StoredAuditRecord) -> str:
    """One record as a line of JSON (no newline): its fields flattened beside sequence,
    hash and recorded."""
    body: dict[str, Any] = json_format.MessageToDict(
        record.record, preserving_proto_field_name=True
    )
    body.update(sequence=record.sequence, recorded=record.recorded.ToJsonString(), hash=record.hash)
    return json.dumps(body, ensure_ascii=False, sort_keys=True)
