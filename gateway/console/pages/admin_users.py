"""People: list a tenant's users, create one (password + TOTP), delete one. The TOTP
secret and its otpauth URI are in the API's answer once, so the page shows them once,
after the redirect; the password typed is never sent back to the browser."""

from __future__ import annotations

from aiohttp import web

from gateway.auth.scopes import ADMIN
from gateway.console.app import Console
from gateway.console.forms import FieldErrors
from gateway.console.pages.admin_common import (
    FORM_REFUSALS,
    go,
    posted,
    refusal,
    render,
    shown_tenant,
    tenant_names,
)
from gateway.console.pages.admin_rows import USER_HEADERS, flash, scope_choices, user_rows
from gateway.console.view import View
from llmos.v1 import admin_pb2

USER_FIELDS = ("username", "tenant", "password", "scopes")


async def show_users(
    view: View,
    status: int = 200,
    values: dict[str, str] | None = None,
    checked: list[str] | None = None,
    errors: FieldErrors | None = None,
) -> web.Response:
    """The users of one tenant, and the form that creates one."""
    names = await tenant_names(view)
    tenant = shown_tenant(view, names, (values or {}).get("tenant", ""))
    reply = await view.call("Admin/ListUsers", admin_pb2.ListUsersRequest(tenant=tenant))
    kept = {k: v for k, v in (values or {"tenant": tenant}).items() if k != "password"}
    return render(
        view,
        "admin_users.html",
        "users",
        status=status,
        names=names,
        listed=tenant,
        headers=USER_HEADERS,
        rows=user_rows(reply.users, view.session.tokens.username),
        scopes=scope_choices(view.session.tokens.scopes),
        values=kept,
        checked=checked or [],
        errors=errors or {},
    )


def register(console: Console) -> None:
    async def users(view: View) -> web.StreamResponse:
        return await show_users(view)

    async def create(view: View) -> web.StreamResponse:
        form, scopes = await posted(view)
        request = admin_pb2.CreateUserRequest(
            tenant=form.get("tenant", "").strip(),
            username=form.get("username", "").strip(),
            password=form.get("password", ""),
            scopes=scopes,
        )
        try:
            reply = await view.call("Admin/CreateUser", request)
        except FORM_REFUSALS as exc:
            status, errors = refusal(exc, USER_FIELDS, exists="username", missing="tenant")
            return await show_users(view, status, form, scopes, errors)
        user = reply.user
        flash(
            view.session.flash,
            f"User {user.username} created in tenant {user.tenant}. Give them the TOTP "
            "secret (or the URI) by a safe way: it is not shown again.",
            {"new-totp-secret": reply.totp_secret, "new-totp-uri": reply.totp_uri},
        )
        raise go("users", user.tenant)

    async def delete(view: View) -> web.StreamResponse:
        form, _ = await posted(view)
        username = form.get("username", "")
        await view.call("Admin/DeleteUser", admin_pb2.DeleteUserRequest(username=username))
        flash(view.session.flash, f"User {username} deleted: they can no longer sign in.")
        raise go("users", form.get("tenant", ""))

    console.page("GET", "/console/admin/users", ADMIN, users)
    console.page("POST", "/console/admin/users", ADMIN, create)
    console.page("POST", "/console/admin/users/delete", ADMIN, delete)
