"""The audit page's downloads: a search's records as JSON Lines (the very lines
`llmos audit query` writes, so tools read either) or as CSV for a spreadsheet.

CSV cells that a spreadsheet would run as a formula (text beginning with = + - @, a tab
or a carriage return) get a leading apostrophe: audit records carry text that callers
chose (resource names, refusals, redacted prompts), and opening an export must not run
it. The JSON Lines are exact."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from gateway.web.security import PAGE_HEADERS
from llmos.audit_text import json_line
from llmos.errors import ResourceExhausted
from llmos.v1 import audit_pb2

Fetch = Callable[[audit_pb2.QueryAuditRequest], Awaitable[audit_pb2.QueryAuditResponse]]
Sleep = Callable[[float], Awaitable[None]]

#: the formats offered: the Content-Type and the file name's extension of each
FORMATS = {
    "jsonl": ("application/x-ndjson; charset=utf-8", "jsonl"),
    "csv": ("text/csv; charset=utf-8", "csv"),
}
#: the CSV's columns, in order: the record's fields beside the log's own
COLUMNS = (
    "sequence", "time", "recorded", "source", "tenant", "principal", "client_id", "action",
    "resource", "outcome", "detail", "latency_ms", "tokens", "client_address", "request_id",
    "id", "hash", "prompt", "output",
)  # fmt: skip
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: records asked for per call while exporting (the API's largest page)
EXPORT_PAGE = 1000
#: tries of one page the rate limit refused, and the longest wait between them: an
#: export of a large log is many calls in a row
TRIES = 4
MAX_WAIT_S = 10.0


async def every_page(
    fetch: Fetch, request: audit_pb2.QueryAuditRequest, sleep: Sleep = asyncio.sleep
) -> AsyncIterator[audit_pb2.QueryAuditResponse]:
    """Each page of `request`'s results in turn, following the API's page tokens to
    the last; a page the rate limit refuses is asked for again after the wait it names."""
    request.page_size = EXPORT_PAGE
    while True:
        tries = 1
        while True:
            try:
                found = await fetch(request)
                break
            except ResourceExhausted as exc:
                if tries >= TRIES:
                    raise
                tries += 1
                await sleep(min(exc.retry_after_s or 1.0, MAX_WAIT_S))
        yield found
        if not found.next_page_token:
            return
        request.page_token = found.next_page_token


def _csv(cells: tuple[str | int | float, ...]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(cells)
    return out.getvalue()


def _cell(text: str) -> str:
    """Text a spreadsheet shows as text, never evaluates."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_header() -> str:
    """The CSV's first line: the names of `COLUMNS`."""
    return _csv(COLUMNS)


def csv_line(stored: audit_pb2.StoredAuditRecord) -> str:
    """One record as a CSV row of `COLUMNS` (times in ISO 8601, UTC)."""
    r = stored.record
    values: dict[str, str | int | float] = {
        "sequence": stored.sequence,
        "time": r.time.ToJsonString() if r.HasField("time") else "",
        "recorded": stored.recorded.ToJsonString() if stored.HasField("recorded") else "",
        "latency_ms": r.latency_ms,
        "tokens": r.tokens,
        "hash": stored.hash,
    }
    for name in COLUMNS:
        if name not in values:
            values[name] = _cell(getattr(r, name))
    return _csv(tuple(values[name] for name in COLUMNS))


def line_of(form: str, stored: audit_pb2.StoredAuditRecord) -> str:
    """`stored` as a line of the named format."""
    return csv_line(stored) if form == "csv" else json_line(stored) + "\n"


def download_headers(form: str, now_s: float) -> dict[str, str]:
    """The pages' security headers, and those that make the browser save the file
    (named after the moment of the export) rather than show it."""
    content_type, extension = FORMATS[form]
    stamp = datetime.fromtimestamp(now_s, UTC).strftime("%Y%m%dT%H%M%SZ")
    return {
        **PAGE_HEADERS,
        "Content-Type": content_type,
        "Content-Disposition": f'attachment; filename="llmos-audit-{stamp}.{extension}"',
    }
