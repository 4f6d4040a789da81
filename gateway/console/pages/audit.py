"""The audit log: search it (a GET form, so a search is a link one can share), page
through the results, download every record a search finds (JSON Lines or CSV), and
check the log's hash chain and signed checkpoints (`VerifyAudit`, system tenant only).

Every call is the public Audit service's, as the signed-in person: the gateway keeps a
tenant's principals to their own tenant's records, and the audit service has already
redacted what the content policy says; the page shows what it is given."""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from gateway.auth.scopes import ADMIN, AUDIT_READ, SYSTEM_TENANT
from gateway.console.app import Console
from gateway.console.forms import FieldErrors, field_errors
from gateway.console.pages.audit_export import (
    FORMATS,
    csv_header,
    download_headers,
    every_page,
    line_of,
)
from gateway.console.pages.audit_rows import (
    ALIASES,
    FILTERS,
    HEADERS,
    ORDERS,
    PATH,
    AuditSearch,
    Paging,
    export_link,
    link,
    outcome_options,
    record_row,
    size_options,
    verdict_text,
)
from gateway.console.view import View
from llmos.errors import (
    InvalidArgument,
    LLMOSError,
    PermissionDenied,
    Unauthenticated,
)
from llmos.v1 import audit_pb2

log = logging.getLogger("llmos.gateway.console")

#: the session's flash keys for the verdict shown after the redirect
VERDICT = "audit.verify"
VERDICT_OK = "audit.verify.ok"
_FIELDS = (*FILTERS, "size", "order")


def register(console: Console) -> None:
    """The page, its download and its verify form, for holders of scope audit:read."""
    console.page("GET", PATH, AUDIT_READ, show)
    console.page("GET", f"{PATH}/export", AUDIT_READ, export)
    console.page("POST", f"{PATH}/verify", AUDIT_READ, verify)


async def show(view: View) -> web.StreamResponse:
    """The search form and one page of what it finds."""
    search = AuditSearch.from_query(view.request.query)
    paging = Paging.from_query(view.request.query)
    try:
        request = search.request(time.time_ns())
        request.page_token = paging.token
        found = await view.call("Audit/QueryAudit", request)
    except InvalidArgument as exc:
        return _render(view, search, paging, errors=field_errors(exc, _FIELDS, ALIASES), status=400)
    except PermissionDenied as exc:
        return _render(view, search, paging, errors={"": str(exc)}, status=403)
    before = paging.previous()
    return _render(
        view,
        search,
        paging,
        rows=[record_row(r) for r in found.records],
        next_link=link(search, paging.next(found.next_page_token)) if found.next_page_token else "",
        previous_link=link(search, before) if before is not None else "",
    )


def _render(
    view: View,
    search: AuditSearch,
    paging: Paging,
    errors: FieldErrors | None = None,
    status: int = 200,
    rows: list[tuple[str, ...]] | None = None,
    next_link: str = "",
    previous_link: str = "",
) -> web.Response:
    tokens = view.session.tokens
    flash = view.session.flash
    verdict = flash.pop(VERDICT, None)
    ok = flash.pop(VERDICT_OK, "") == "yes"
    first = link(search)
    context: dict[str, Any] = {
        "search": search,
        "errors": errors or {},
        "rows": rows or [],
        "searched": rows is not None,
        "headers": HEADERS,
        "page_number": paging.number,
        "next_link": next_link,
        "previous_link": previous_link,
        "first_link": first if paging.number > 1 and previous_link != first else "",
        "exports": [(form, export_link(search, form)) for form in FORMATS],
        "outcome_options": outcome_options(search.outcome),
        "size_options": size_options(search.size),
        "orders": ORDERS,
        "show_tenant": bool(search.tenant) or (tokens.tenant == SYSTEM_TENANT and view.may(ADMIN)),
        "can_verify": tokens.tenant == SYSTEM_TENANT,
        "verify_action": link(search, path=f"{PATH}/verify"),
        "verdict": verdict,
        "verdict_ok": ok,
    }
    return view.render("audit.html", status=status, **context)


async def export(view: View) -> web.StreamResponse:
    """Every record the search finds, every page of it, streamed as a download."""
    query = view.request.query
    search = AuditSearch.from_query(query)
    form = query.get("format", "jsonl")
    if form not in FORMATS:
        form = "jsonl"

    async def fetch(request: audit_pb2.QueryAuditRequest) -> audit_pb2.QueryAuditResponse:
        found: audit_pb2.QueryAuditResponse = await view.call("Audit/QueryAudit", request)
        return found

    try:
        pages = every_page(fetch, search.request(time.time_ns()))
        found = await anext(pages)  # a refusal of the first page can still be a page
    except InvalidArgument as exc:
        errors = field_errors(exc, _FIELDS, ALIASES)
        return _render(view, search, Paging(), errors=errors, status=400)
    except PermissionDenied as exc:
        return _render(view, search, Paging(), errors={"": str(exc)}, status=403)
    response = web.StreamResponse(headers=download_headers(form, time.time()))
    await response.prepare(view.request)
    if form == "csv":
        await response.write(csv_header().encode())
    count = 0
    try:
        while True:
            await response.write("".join(line_of(form, r) for r in found.records).encode())
            count += len(found.records)
            found = await anext(pages)
    except StopAsyncIteration:
        await response.write_eof()
    except LLMOSError as exc:
        # The status went out with the first page: cut the download short, so the
        # browser reports it failed rather than saving a file that looks complete.
        log.warning("audit export stopped", extra={"records": count, "error": str(exc)})
        if view.request.transport is not None:
            view.request.transport.abort()
    return response


async def verify(view: View) -> web.StreamResponse:
    """Re-walk the chain, then show the verdict on the search the person came from."""
    search = AuditSearch.from_query(view.request.query)
    try:
        verdict = await view.call("Audit/VerifyAudit", audit_pb2.VerifyAuditRequest())
        ok, text = verdict_text(verdict)
    except Unauthenticated:
        raise
    except LLMOSError as exc:
        ok, text = False, f"The check could not run: {exc}"
    view.session.flash[VERDICT] = text
    view.session.flash[VERDICT_OK] = "yes" if ok else "no"
    raise web.HTTPFound(f"{link(search)}#verify-result")
