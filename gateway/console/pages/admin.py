"""Administration: tenants with their quotas and critical-priority grant (this module),
API keys and clients (`admin_credentials`), people (`admin_users`) and the door's
blocklist (`admin_blocks`), each under /console/admin/...

Everything goes through the public Admin service as the signed-in person, so its rules
hold here as on the command line (`llmos admin ...`): an admin of tenant `system`
manages every tenant, any other admin only their own, and nobody grants scopes they do
not hold. A secret the API returns once is shown once, after the redirect."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.auth.scopes import ADMIN
from gateway.console.app import Console
from gateway.console.forms import FieldErrors
from gateway.console.pages import admin_blocks, admin_credentials, admin_users
from gateway.console.pages.admin_common import FORM_REFUSALS, go, posted, refusal, render
from gateway.console.pages.admin_rows import TENANT_HEADERS, flash, quota_of, tenant_rows
from gateway.console.view import View
from llmos.v1 import admin_pb2

CREATE_FIELDS = ("name", "requests_per_minute", "tokens_per_minute")
QUOTA_FIELDS = ("tenant", "rpm", "tpm")
#: the quota form's short names for the API's quota fields
QUOTA_ALIASES = {"requests_per_minute": "rpm", "tokens_per_minute": "tpm"}


async def show_tenants(
    view: View,
    status: int = 200,
    create: tuple[dict[str, str], FieldErrors] = ({}, {}),
    quota: tuple[dict[str, str], FieldErrors] = ({}, {}),
    grant: tuple[dict[str, str], FieldErrors] = ({}, {}),
) -> web.Response:
    """The tenants page; each form with what was typed into it and its errors."""
    reply = await view.call("Admin/ListTenants", admin_pb2.ListTenantsRequest())
    forms: dict[str, Any] = {}
    for name, (values, errors) in (("create", create), ("quota", quota), ("grant", grant)):
        forms[name] = {"values": values, "errors": errors}
    return render(
        view,
        "admin.html",
        "",
        status=status,
        headers=TENANT_HEADERS,
        rows=tenant_rows(reply.tenants),
        names=[t.name for t in reply.tenants],
        forms=forms,
    )


def register(console: Console) -> None:
    async def show(view: View) -> web.StreamResponse:
        return await show_tenants(view)

    async def create(view: View) -> web.StreamResponse:
        form, _ = await posted(view)
        name = form.get("name", "").strip()
        try:
            quota = quota_of(form, "requests_per_minute", "tokens_per_minute")
            request = admin_pb2.CreateTenantRequest(name=name, quota=quota)
            await view.call("Admin/CreateTenant", request)
        except FORM_REFUSALS as exc:
            status, errors = refusal(exc, CREATE_FIELDS, exists="name")
            return await show_tenants(view, status, create=(form, errors))
        flash(view.session.flash, f"Tenant {name} created.")
        raise go("")

    async def set_quota(view: View) -> web.StreamResponse:
        form, _ = await posted(view)
        tenant = form.get("tenant", "")
        try:
            quota = quota_of(form, "rpm", "tpm", required=True)
            request = admin_pb2.SetQuotaRequest(tenant=tenant, quota=quota)
            await view.call("Admin/SetQuota", request)
        except FORM_REFUSALS as exc:
            status, errors = refusal(exc, QUOTA_FIELDS, QUOTA_ALIASES, missing="tenant")
            return await show_tenants(view, status, quota=(form, errors))
        flash(view.session.flash, f"The quota of tenant {tenant} is set.")
        raise go("")

    async def set_grant(view: View) -> web.StreamResponse:
        form, _ = await posted(view)
        tenant, critical = form.get("tenant", ""), form.get("critical") == "1"
        try:
            request = admin_pb2.SetPriorityGrantRequest(tenant=tenant, critical=critical)
            await view.call("Admin/SetPriorityGrant", request)
        except FORM_REFUSALS as exc:
            status, errors = refusal(exc, ("tenant",), missing="tenant")
            return await show_tenants(view, status, grant=(form, errors))
        done = "may now use" if critical else "may no longer use"
        flash(view.session.flash, f"Tenant {tenant} {done} priority class critical.")
        raise go("")

    console.page("GET", "/console/admin", ADMIN, show)
    console.page("POST", "/console/admin/tenants", ADMIN, create)
    console.page("POST", "/console/admin/quota", ADMIN, set_quota)
    console.page("POST", "/console/admin/critical", ADMIN, set_grant)
    admin_credentials.register(console)
    admin_users.register(console)
    admin_blocks.register(console)
