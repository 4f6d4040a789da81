"""The audit page's decisions, apart from its handlers: a search as the query string
carries it (so a search is a link one can share) and as the `QueryAuditRequest` it
asks for, the pages of its results, a record as a table row, and a verdict of
`VerifyAudit` in words. No I/O and no clock: the time is passed in."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from urllib.parse import urlencode

from llmos.audit_text import parse_time_ns
from llmos.errors import InvalidArgument
from llmos.v1 import audit_pb2

PATH = "/console/audit"
#: the filters of the search form, in the order the form shows them
FILTERS = ("since", "until", "principal", "action", "resource", "outcome", "source", "tenant")
ORDERS = {"newest": "Newest first", "oldest": "Oldest first"}
SIZES = (25, 50, 100, 200)
DEFAULT_ORDER = "newest"
DEFAULT_SIZE = "50"
#: the API's largest page
MAX_SIZE = 1000
#: gRPC status names an outcome may be ("OK" when allowed and done)
OUTCOMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
#: the API's names of request fields, where they differ from the form's
ALIASES = {"page_size": "size", "newest_first": "order"}
HEADERS = (
    "#", "Time (UTC)", "Principal", "Action", "Resource", "Outcome", "Latency",
    "Client address", "Tenant", "Detail",
)  # fmt: skip
#: how many earlier pages "Previous" can go back through (the query string stays short)
MAX_BACK = 100
#: a page token as the audit service gives them out (URL-safe base64)
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


@dataclass(frozen=True)
class AuditSearch:
    """The search form's values, as typed (kept to show them again)."""

    since: str = ""
    until: str = ""
    principal: str = ""
    action: str = ""
    resource: str = ""
    outcome: str = ""
    source: str = ""
    tenant: str = ""
    order: str = DEFAULT_ORDER
    size: str = DEFAULT_SIZE

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> AuditSearch:
        """The search a query string names; what it lacks takes the defaults."""
        values = {name: query.get(name, "").strip() for name in FILTERS}
        values["outcome"] = values["outcome"].upper()
        order = query.get("order", DEFAULT_ORDER)
        size = query.get("size", "").strip() or DEFAULT_SIZE
        return cls(**values, order=order if order in ORDERS else DEFAULT_ORDER, size=size)

    def query(self) -> dict[str, str]:
        """The query string's fields for this search: only those not at their default,
        so links stay short."""
        default = AuditSearch()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }

    def request(self, now_ns: int) -> audit_pb2.QueryAuditRequest:
        """The API request for this search's first page; InvalidArgument names the form
        field at fault (ages count back from `now_ns`)."""
        try:
            size = int(self.size)
        except ValueError:
            size = 0
        if not 1 <= size <= MAX_SIZE:
            raise InvalidArgument("size", f"must be a whole number from 1 to {MAX_SIZE}")
        request = audit_pb2.QueryAuditRequest(
            tenant=self.tenant, principal=self.principal, action=self.action,
            resource=self.resource, outcome=self.outcome, source=self.source,
            page_size=size, newest_first=self.order == "newest",
        )  # fmt: skip
        if self.since:
            request.since.FromNanoseconds(parse_time_ns(self.since, "since", now_ns))
        if self.until:
            request.until.FromNanoseconds(parse_time_ns(self.until, "until", now_ns))
        return request


@dataclass(frozen=True)
class Paging:
    """Where in a search's results a page is: the API gives only a token for the next
    page, so the tokens of the pages before travel in the link (`back`), newest last."""

    token: str = ""
    back: tuple[str, ...] = ()
    number: int = 1

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Paging:
        """The page a query string names; anything malformed means the first page."""
        token = query.get("page", "")
        if not _TOKEN.fullmatch(token):
            return cls()
        back = tuple(t for t in query.get("back", "").split(",") if t == "" or _TOKEN.fullmatch(t))
        try:
            number = max(int(query.get("n", "")), 2)
        except ValueError:
            number = len(back) + 1
        return cls(token, back[-MAX_BACK:], number)

    def query(self) -> dict[str, str]:
        """The query string's fields for this page (none for the first)."""
        if not self.token:
            return {}
        return {"page": self.token, "back": ",".join(self.back), "n": str(self.number)}

    def next(self, token: str) -> Paging:
        """The page after this one, whose token the API gave."""
        return Paging(token, (*self.back, self.token)[-MAX_BACK:], self.number + 1)

    def previous(self) -> Paging | None:
        """The page before this one, if the link still knows it."""
        if not self.back:
            return None
        return Paging(self.back[-1], self.back[:-1], self.number - 1)


def link(search: AuditSearch, paging: Paging | None = None, path: str = PATH) -> str:
    """The address of a page of `search`'s results (of its first page by default)."""
    query = {**search.query(), **(paging.query() if paging else {})}
    return f"{path}?{urlencode(query)}" if query else path


def export_link(search: AuditSearch, form: str) -> str:
    """The address of every record `search` finds, as a download in `form`."""
    return f"{PATH}/export?{urlencode({**search.query(), 'format': form})}"


def outcome_options(current: str) -> list[tuple[str, str]]:
    """The outcome menu's (value, label) pairs; a value only a link gave is kept."""
    options = [("", "Any outcome"), *((name, name) for name in OUTCOMES)]
    return options if current in ("", *OUTCOMES) else [*options, (current, current)]


def size_options(current: str) -> list[tuple[str, str]]:
    """The page size menu's (value, label) pairs; a size only a link gave is kept."""
    sizes = [str(size) for size in SIZES]
    if current not in sizes:
        sizes.append(current)
    return [(size, f"{size} records") for size in sizes]


def when(stamp_seconds: int, nanos: int) -> str:
    """A record's time as a person reads it, to the millisecond, in UTC."""
    if not stamp_seconds and not nanos:
        return "-"
    moment = datetime.fromtimestamp(stamp_seconds, UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{nanos // 1_000_000:03d}"


def record_row(stored: audit_pb2.StoredAuditRecord) -> tuple[str, ...]:
    """One record as the results table shows it ("-" where a field is empty)."""
    r = stored.record
    latency = f"{r.latency_ms:.1f} ms" if r.latency_ms else "-"
    return (
        str(stored.sequence),
        when(r.time.seconds, r.time.nanos),
        r.principal or "-",
        r.action or "-",
        r.resource or "-",
        r.outcome or "-",
        latency,
        r.client_address or "-",
        r.tenant or "-",
        r.detail or "-",
    )


def verdict_text(verdict: audit_pb2.VerifyAuditResponse) -> tuple[bool, str]:
    """Whether the log is intact, and what the check found, in sentences."""
    if not verdict.valid:
        found = (
            f" The {verdict.records_checked} records before it, from record "
            f"{verdict.first_sequence} to {verdict.last_sequence}, check out."
            if verdict.records_checked
            else ""
        )
        return False, (
            f"The audit log is broken at record {verdict.first_bad_sequence}: "
            f"{verdict.detail}.{found}"
        )
    if not verdict.records_checked:
        return True, "The audit log is intact: it holds no records yet."
    # the API's summary names the witness's checkpoint when there is one
    witness = (
        "" if verdict.witnessed_sequence else " The witness on JetStream holds no checkpoint yet."
    )
    return True, (
        f"The audit log is intact up to record {verdict.last_sequence}: {verdict.detail}."
        f"{witness} The newest record's hash is {verdict.head_hash}."
    )
