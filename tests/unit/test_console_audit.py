"""The console's audit page, apart from its handlers: a search as a link and as the API
request it makes, paging, records as table rows and export lines, and the verdict."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

import pytest

from gateway.console.forms import field_errors
from gateway.console.pages.audit_export import (
    COLUMNS,
    EXPORT_PAGE,
    TRIES,
    csv_header,
    csv_line,
    download_headers,
    every_page,
    line_of,
)
from gateway.console.pages.audit_rows import (
    ALIASES,
    FILTERS,
    HEADERS,
    MAX_BACK,
    AuditSearch,
    Paging,
    export_link,
    link,
    outcome_options,
    record_row,
    size_options,
    verdict_text,
)
from gateway.web.render import render_text
from gateway.web.security import PAGE_HEADERS
from llmos.audit_text import json_line
from llmos.errors import InvalidArgument, ResourceExhausted
from llmos.v1 import audit_pb2

NOW_NS = 1_780_000_000 * 1_000_000_000
HOUR_NS = 3600 * 1_000_000_000


def _query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def _stored(**fields: object) -> audit_pb2.StoredAuditRecord:
    record = audit_pb2.AuditRecord(
        id="r1", source="gateway", principal="alice", tenant="acme",
        action="/llmos.v1.Admin/CreateUser", resource="user/bob", outcome="PERMISSION_DENIED",
        detail="needs scope 'admin'", latency_ms=12.345, tokens=7, client_address="10.0.0.9",
        request_id="q1",
    )  # fmt: skip
    for name, value in fields.items():
        setattr(record, name, value)
    record.time.FromNanoseconds(1_780_000_000 * 1_000_000_000 + 250_000_000)
    stored = audit_pb2.StoredAuditRecord(sequence=42, record=record, hash="ab" * 32)
    stored.recorded.FromNanoseconds(1_780_000_001 * 1_000_000_000)
    return stored


# -- the search ---------------------------------------------------------------------------


def test_a_query_string_becomes_the_request_with_every_filter_it_names() -> None:
    search = AuditSearch.from_query(
        {"principal": " alice ", "action": "/llmos.v1.Admin/*", "resource": "model/*",
         "outcome": "permission_denied", "source": "gateway", "tenant": "acme",
         "order": "oldest", "size": "25"}
    )  # fmt: skip
    request = search.request(NOW_NS)
    assert (request.principal, request.action, request.resource) == (
        "alice", "/llmos.v1.Admin/*", "model/*",
    )  # fmt: skip
    assert (request.outcome, request.source, request.tenant) == (
        "PERMISSION_DENIED", "gateway", "acme",
    )  # fmt: skip
    assert request.page_size == 25
    assert not request.newest_first
    assert not request.HasField("since") and not request.HasField("until")


def test_an_empty_query_asks_for_the_newest_fifty_records() -> None:
    request = AuditSearch.from_query({}).request(NOW_NS)
    assert request.newest_first and request.page_size == 50
    assert request == audit_pb2.QueryAuditRequest(newest_first=True, page_size=50)


def test_times_are_ages_before_now_or_iso_times_in_utc_unless_a_zone_is_given() -> None:
    search = AuditSearch.from_query({"since": "2h", "until": "2026-05-01T09:00"})
    request = search.request(NOW_NS)
    assert request.since.ToNanoseconds() == NOW_NS - 2 * HOUR_NS
    assert request.until.ToDatetime(UTC) == datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
    zoned = AuditSearch(since="2026-05-01T11:00:00.5+02:00").request(NOW_NS)
    assert (
        zoned.since.ToNanoseconds()
        == int(datetime(2026, 5, 1, 9, tzinfo=UTC).timestamp()) * (10**9) + 500_000_000
    )


@pytest.mark.parametrize(
    ("query", "field"),
    [({"since": "yesterday"}, "since"), ({"until": "5 weeks"}, "until"),
     ({"size": "0"}, "size"), ({"size": "1001"}, "size"), ({"size": "many"}, "size")],
)  # fmt: skip
def test_a_value_the_form_cannot_use_is_refused_naming_its_field(
    query: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        AuditSearch.from_query(query).request(NOW_NS)
    assert refused.value.field == field
    assert field_errors(refused.value, (*FILTERS, "size", "order"), ALIASES).keys() == {field}


def test_the_apis_refusals_land_next_to_the_form_field_they_name() -> None:
    fields = (*FILTERS, "size", "order")
    assert field_errors(InvalidArgument("until", "must be later than since"), fields, ALIASES) == {
        "until": "must be later than since"
    }
    assert "size" in field_errors(InvalidArgument("page_size", "too big"), fields, ALIASES)
    assert "" in field_errors(InvalidArgument("page_token", "not ours"), fields, ALIASES)


def test_an_unknown_order_falls_back_to_newest_first() -> None:
    assert AuditSearch.from_query({"order": "sideways"}).order == "newest"


def test_a_search_link_carries_only_what_is_not_a_default_and_reads_back_the_same() -> None:
    search = AuditSearch(since="15m", principal="alice", outcome="OK", order="oldest")
    url = link(search)
    assert url.startswith("/console/audit?")
    assert _query_of(url) == {
        "since": "15m",
        "principal": "alice",
        "outcome": "OK",
        "order": "oldest",
    }
    assert AuditSearch.from_query(_query_of(url)) == search
    assert link(AuditSearch()) == "/console/audit"


def test_the_export_link_names_the_search_and_the_format_but_no_page() -> None:
    url = export_link(AuditSearch(action="oauth.*"), "csv")
    assert urlsplit(url).path == "/console/audit/export"
    assert _query_of(url) == {"action": "oauth.*", "format": "csv"}


def test_menus_keep_a_value_only_a_link_gave() -> None:
    assert ("", "Any outcome") in outcome_options("")
    assert outcome_options("TEAPOT")[-1] == ("TEAPOT", "TEAPOT")
    assert [value for value, _ in size_options("50")] == ["25", "50", "100", "200"]
    assert size_options("300")[-1] == ("300", "300 records")


# -- paging -------------------------------------------------------------------------------


def test_next_and_previous_walk_the_pages_through_the_link() -> None:
    search = AuditSearch(principal="alice")
    first = Paging.from_query({})
    second = first.next("tokB")
    third = second.next("tokC")
    assert (third.token, third.back, third.number) == ("tokC", ("", "tokB"), 3)
    read_back = Paging.from_query(_query_of(link(search, third)))
    assert read_back == third
    back_one = read_back.previous()
    assert back_one == second
    assert back_one is not None and back_one.previous() == Paging("", (), 1)
    assert link(search, back_one.previous()) == link(search)


def test_a_malformed_page_token_means_the_first_page() -> None:
    assert Paging.from_query({"page": "<script>", "back": "a,b", "n": "9"}) == Paging()


def test_the_link_remembers_a_bounded_number_of_earlier_pages() -> None:
    paging = Paging()
    for number in range(MAX_BACK + 20):
        paging = paging.next(f"t{number}")
    assert len(paging.back) == MAX_BACK
    assert paging.number == MAX_BACK + 21
    assert len(link(AuditSearch(), paging)) < 4000


# -- records ------------------------------------------------------------------------------


def test_a_record_row_shows_time_who_what_outcome_address_and_latency() -> None:
    row = dict(zip(HEADERS, record_row(_stored()), strict=True))
    assert row == {
        "#": "42", "Time (UTC)": "2026-05-28 20:26:40.250", "Principal": "alice",
        "Tenant": "acme", "Action": "/llmos.v1.Admin/CreateUser", "Resource": "user/bob",
        "Outcome": "PERMISSION_DENIED", "Client address": "10.0.0.9", "Latency": "12.3 ms",
        "Detail": "needs scope 'admin'",
    }  # fmt: skip


def test_empty_fields_show_a_dash() -> None:
    row = record_row(_stored(principal="", resource="", latency_ms=0.0, detail=""))
    assert row[2] == row[4] == row[6] == row[9] == "-"


def test_a_json_lines_export_writes_the_lines_llmos_audit_query_writes() -> None:
    stored = _stored(prompt="[redacted] hello")
    line = line_of("jsonl", stored)
    assert line == json_line(stored) + "\n"  # llmos audit query's own function
    assert line.count("\n") == 1
    body = json.loads(line)
    assert body["sequence"] == 42 and body["hash"] == "ab" * 32
    assert body["prompt"] == "[redacted] hello"


def test_csv_rows_follow_the_header_and_quote_what_needs_it() -> None:
    stored = _stored(detail='refused, "twice"\nreally')
    parsed = list(csv.reader(io.StringIO(csv_header() + csv_line(stored))))
    assert parsed[0] == list(COLUMNS)
    row = dict(zip(COLUMNS, parsed[1], strict=True))
    assert row["detail"] == 'refused, "twice"\nreally'
    assert row["sequence"] == "42" and row["time"] == "2026-05-28T20:26:40.250Z"
    assert row["latency_ms"] == "12.345" and row["tokens"] == "7"


def test_csv_cells_a_spreadsheet_would_evaluate_are_kept_as_text() -> None:
    stored = _stored(resource='=HYPERLINK("http://evil")', principal="@alice", detail="-1+1")
    row = dict(zip(COLUMNS, next(csv.reader(io.StringIO(csv_line(stored)))), strict=True))
    assert row["resource"].startswith("'=")
    assert row["principal"] == "'@alice" and row["detail"] == "'-1+1"
    assert row["action"] == "/llmos.v1.Admin/CreateUser"


def test_a_download_carries_the_pages_security_headers_and_is_an_attachment() -> None:
    headers = download_headers("csv", 1_780_000_000)
    assert PAGE_HEADERS.items() <= headers.items()
    assert headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"] == (
        'attachment; filename="llmos-audit-20260528T202640Z.csv"'
    )
    assert download_headers("jsonl", 0)["Content-Type"].startswith("application/x-ndjson")


class _FakeAudit:
    """QueryAudit over `count` records, `size` a page, refusing the first `busy` calls."""

    def __init__(self, count: int, size: int, busy: int = 0) -> None:
        self.count, self.size, self.busy = count, size, busy
        self.asked: list[tuple[str, int]] = []

    async def fetch(self, request: audit_pb2.QueryAuditRequest) -> audit_pb2.QueryAuditResponse:
        self.asked.append((request.page_token, request.page_size))
        if self.busy:
            self.busy -= 1
            raise ResourceExhausted("slow down", retry_after_s=2.5)
        start = int(request.page_token or 0)
        end = min(start + self.size, self.count)
        found = audit_pb2.QueryAuditResponse(
            records=[audit_pb2.StoredAuditRecord(sequence=n + 1) for n in range(start, end)]
        )
        if end < self.count:
            found.next_page_token = str(end)
        return found


async def _all(pages: AsyncIterator[audit_pb2.QueryAuditResponse]) -> list[int]:
    return [r.sequence async for page in pages for r in page.records]


def test_an_export_walks_every_page_not_only_the_one_shown() -> None:
    audit = _FakeAudit(count=7, size=3)
    request = audit_pb2.QueryAuditRequest(principal="alice", page_size=25, page_token="")
    assert asyncio.run(_all(every_page(audit.fetch, request))) == list(range(1, 8))
    assert audit.asked == [("", EXPORT_PAGE), ("3", EXPORT_PAGE), ("6", EXPORT_PAGE)]


def test_an_export_waits_out_the_rate_limit_and_gives_up_after_a_few_tries() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    audit = _FakeAudit(count=2, size=5, busy=TRIES - 1)
    pages = every_page(audit.fetch, audit_pb2.QueryAuditRequest(), sleep)
    assert asyncio.run(_all(pages)) == [1, 2]
    assert waits == [2.5] * (TRIES - 1)
    hopeless = _FakeAudit(count=2, size=5, busy=TRIES)
    with pytest.raises(ResourceExhausted):
        asyncio.run(_all(every_page(hopeless.fetch, audit_pb2.QueryAuditRequest(), sleep)))


# -- the verdict --------------------------------------------------------------------------


def test_an_intact_log_says_up_to_which_record() -> None:
    ok, text = verdict_text(
        audit_pb2.VerifyAuditResponse(
            valid=True, records_checked=120, first_sequence=1, last_sequence=120,
            detail="120 records (1-120) chain correctly and match 2 signed checkpoints, "
            "and the witness's checkpoint at record 100",
            checkpoints_checked=2, head_hash="cd" * 32, witnessed_sequence=100,
        )
    )  # fmt: skip
    assert ok
    assert text.startswith("The audit log is intact up to record 120: 120 records")
    assert "checkpoint at record 100." in text and "cd" * 32 in text
    assert "holds no checkpoint" not in text


def test_a_log_the_witness_holds_nothing_of_says_so() -> None:
    _, text = verdict_text(
        audit_pb2.VerifyAuditResponse(valid=True, records_checked=3, last_sequence=3, detail="ok")
    )
    assert "The witness on JetStream holds no checkpoint yet." in text


def test_a_broken_log_names_the_record_and_why() -> None:
    ok, text = verdict_text(
        audit_pb2.VerifyAuditResponse(
            valid=False, first_bad_sequence=57, detail="record 57's hash does not match",
            records_checked=56, first_sequence=1, last_sequence=56,
        )
    )  # fmt: skip
    assert not ok
    assert text.startswith("The audit log is broken at record 57: record 57's hash")
    assert "from record 1 to 56, check out" in text


def test_an_empty_log_is_intact() -> None:
    assert verdict_text(audit_pb2.VerifyAuditResponse(valid=True)) == (
        True,
        "The audit log is intact: it holds no records yet.",
    )


# -- the template -------------------------------------------------------------------------


def _page(**context: object) -> str:
    search = AuditSearch(principal='<b>"x"</b>')
    base: dict[str, object] = {
        "nav": [], "current": "/console/audit", "user": "ann", "tenant": "system",
        "csrf": "tok", "search": search, "errors": {"until": "must be later than since"},
        "rows": [record_row(_stored())], "searched": True, "headers": HEADERS,
        "page_number": 2, "next_link": "/console/audit?page=b&n=3", "previous_link": "",
        "first_link": "/console/audit", "exports": [("jsonl", export_link(search, "jsonl"))],
        "outcome_options": outcome_options(""), "size_options": size_options("50"),
        "orders": {"newest": "Newest first"}, "show_tenant": True, "can_verify": True,
        "verify_action": link(search, path="/console/audit/verify"),
        "verdict": "The audit log is broken at record 3: <bad>.", "verdict_ok": False,
    }  # fmt: skip
    return render_text("audit.html", **{**base, **context})


def test_the_page_shows_the_verdict_errors_and_csrf_and_escapes_what_it_is_given() -> None:
    html = _page()
    assert 'id="verify-result" class="error"' in html
    assert "record 3: &lt;bad&gt;." in html
    assert 'id="e-until"' in html and "must be later than since" in html
    assert 'name="csrf_token" value="tok"' in html
    assert "<b>" not in html and "style=" not in html and "<script>" not in html
    assert "Next page" in html and "First page" in html


def test_the_verify_form_is_only_offered_to_the_system_tenant() -> None:
    html = _page(can_verify=False, verdict=None)
    assert "Verify the audit log" not in html and 'id="verify-result"' not in html
