"""What every administration page shares: its sections, the tenant it shows, the
secrets and notice a change left behind, and turning the API's refusal of a form into
errors beside the form's fields.

The API decides who may do what (a `system` admin manages every tenant, any other admin
its own); these pages only hide what would certainly be refused."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.auth.scopes import ADMIN, SYSTEM_TENANT
from gateway.console.forms import FieldErrors, field_errors
from gateway.console.pages.admin_rows import section_path, take_flash
from gateway.console.view import View
from gateway.openai.errors import failure_of
from llmos.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LLMOSError,
    NotFound,
    PermissionDenied,
)
from llmos.v1 import admin_pb2

#: refusals a form shows beside itself (others end on the console's refusal page)
FORM_REFUSALS = (InvalidArgument, AlreadyExists, NotFound, PermissionDenied, FailedPrecondition)


@dataclass(frozen=True)
class Tab:
    path: str
    label: str
    current: bool


#: (section, label, only for admins of the system tenant)
SECTIONS = (
    ("", "Tenants", False),
    ("api-keys", "API keys", False),
    ("clients", "Clients", False),
    ("users", "Users", False),
    ("blocks", "Blocked", True),
)


def is_system_admin(view: View) -> bool:
    """Whether the person manages every tenant (and the door's blocklist)."""
    return view.session.tokens.tenant == SYSTEM_TENANT and view.may(ADMIN)


def tabs(current: str, system_admin: bool) -> list[Tab]:
    return [
        Tab(section_path(section), label, section == current)
        for section, label, system_only in SECTIONS
        if system_admin or not system_only
    ]


def render(
    view: View, template: str, section: str, status: int = 200, **context: Any
) -> web.Response:
    """An administration page, with its sections and what the last change left."""
    system_admin = is_system_admin(view)
    return view.render(
        template,
        status=status,
        tabs=tabs(section, system_admin),
        system_admin=system_admin,
        shown=take_flash(view.session.flash),
        **context,
    )


async def tenant_names(view: View) -> list[str]:
    """The tenants the person manages (the API lists only those)."""
    reply = await view.call("Admin/ListTenants", admin_pb2.ListTenantsRequest())
    return [t.name for t in reply.tenants]


def shown_tenant(view: View, names: Iterable[str] = (), typed: str = "") -> str:
    """The tenant a section lists: the one typed into a refused form if the person
    manages it, else the one in the address, else their own."""
    if typed and typed in names:
        return typed
    return view.request.query.get("tenant", "") or view.session.tokens.tenant


def refusal(
    exc: LLMOSError,
    fields: Iterable[str],
    aliases: Mapping[str, str] | None = None,
    *,
    exists: str = "",
    missing: str = "",
) -> tuple[int, FieldErrors]:
    """The status and field errors of a form the API refused: an invalid field beside
    itself (400), a name taken beside `exists` (409), a thing not found beside
    `missing` (404), anything else above the form with its own status."""
    if isinstance(exc, InvalidArgument):
        return 400, field_errors(exc, fields, aliases)
    if isinstance(exc, AlreadyExists) and exists:
        return 409, {exists: str(exc)}
    if isinstance(exc, NotFound) and missing:
        return 404, {missing: str(exc)}
    return failure_of(exc).status, {"": str(exc)}


async def posted(view: View) -> tuple[dict[str, str], list[str]]:
    """The posted form's text fields and its checked scopes (a field given many times,
    which `View.form` would keep only the last of)."""
    data = await view.request.post()
    scopes = [v for v in data.getall("scopes", []) if isinstance(v, str)]
    return {k: v for k, v in data.items() if isinstance(v, str)}, scopes


def go(section: str, tenant: str = "") -> web.HTTPFound:
    """The redirect after a change, so that a reload does not send it again."""
    return web.HTTPFound(section_path(section, tenant))
