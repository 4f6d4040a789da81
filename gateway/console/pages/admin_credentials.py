"""Programs' credentials: API keys (one fixed bearer, for the OpenAI SDKs) and clients
(an id and secret that get short-lived tokens). Both secrets are in the API's answer
once and stored only hashed, so the page shows them once, after the redirect."""

from __future__ import annotations

import time

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
from gateway.console.pages.admin_rows import (
    CLIENT_HEADERS,
    EXPIRY_CHOICES,
    KEY_HEADERS,
    client_rows,
    flash,
    key_rows,
    quota_of,
    scope_choices,
    seconds_of,
)
from gateway.console.view import View
from llmos.v1 import admin_pb2

KEY_FIELDS = ("name", "tenant", "scopes", "expires", "requests_per_minute", "tokens_per_minute")
KEY_ALIASES = {"expires_in_s": "expires"}
CLIENT_FIELDS = ("name", "tenant", "scopes")
CLIENT_QUOTA_FIELDS = ("client_id", "rpm", "tpm")
CLIENT_QUOTA_ALIASES = {"requests_per_minute": "rpm", "tokens_per_minute": "tpm"}


async def show_keys(
    view: View,
    status: int = 200,
    values: dict[str, str] | None = None,
    checked: list[str] | None = None,
    errors: FieldErrors | None = None,
) -> web.Response:
    """The API keys of one tenant, and the form that creates one."""
    names = await tenant_names(view)
    tenant = shown_tenant(view, names, (values or {}).get("tenant", ""))
    reply = await view.call("Admin/ListApiKeys", admin_pb2.ListApiKeysRequest(tenant=tenant))
    return render(
        view,
        "admin_api_keys.html",
        "api-keys",
        status=status,
        names=names,
        listed=tenant,
        headers=KEY_HEADERS,
        rows=key_rows(reply.api_keys, time.time()),
        scopes=scope_choices(view.session.tokens.scopes, for_api_key=True),
        expiries=EXPIRY_CHOICES,
        values=values or {"tenant": tenant},
        checked=checked or [],
        errors=errors or {},
    )


async def show_clients(
    view: View,
    status: int = 200,
    create: tuple[dict[str, str], list[str], FieldErrors] = ({}, [], {}),
    quota: tuple[dict[str, str], FieldErrors] = ({}, {}),
) -> web.Response:
    """The clients of one tenant, the form that creates one and the one that sets a
    client's own limits."""
    names = await tenant_names(view)
    typed = create[0].get("tenant", "") or quota[0].get("tenant", "")
    tenant = shown_tenant(view, names, typed)
    reply = await view.call("Admin/ListClients", admin_pb2.ListClientsRequest(tenant=tenant))
    return render(
        view,
        "admin_clients.html",
        "clients",
        status=status,
        names=names,
        listed=tenant,
        headers=CLIENT_HEADERS,
        rows=client_rows(reply.clients),
        client_choices=[(c.client_id, f"{c.name} ({c.client_id})") for c in reply.clients],
        scopes=scope_choices(view.session.tokens.scopes),
        create={"values": create[0] or {"tenant": tenant}, "checked": create[1],
                "errors": create[2]},
        quota={"values": quota[0], "errors": quota[1]},
    )  # fmt: skip


def register(console: Console) -> None:
    async def keys(view: View) -> web.StreamResponse:
        return await show_keys(view)

    async def create_key(view: View) -> web.StreamResponse:
        form, scopes = await posted(view)
        try:
            request = admin_pb2.CreateApiKeyRequest(
                tenant=form.get("tenant", "").strip(),
                name=form.get("name", ""),
                scopes=scopes,
                expires_in_s=seconds_of(form, "expires"),
                quota=quota_of(form, "requests_per_minute", "tokens_per_minute"),
            )
            reply = await view.call("Admin/CreateApiKey", request)
        except FORM_REFUSALS as exc:
            status, errors = refusal(exc, KEY_FIELDS, KEY_ALIASES, missing="tenant")
            return await show_keys(view, status, form, scopes, errors)
        key = reply.api_key
        flash(
            view.session.flash,
            f"API key {key.name} ({key.key_id}) created for tenant {key.tenant}. "
            "Copy it now: it is not shown again.",
            {"new-api-key": reply.key},
        )
        raise go("api-keys", key.tenant)

    async def revoke_key(view: View) -> web.StreamResponse:
        form, _ = await posted(view)
        key_id = form.get("key_id", "")
        await view.call("Admin/RevokeApiKey", admin_pb2.RevokeApiKeyRequest(key_id=key_id))
        flash(view.session.flash, f"API key {key_id} revoked: it is refused from now on.")
        raise go("api-keys", form.get("tenant", ""))

    async def clients(view: View) -> web.StreamResponse:
        return await show_clients(view)

    async def create_client(view: View) -> web.StreamResponse:
        form, scopes = await posted(view)
        request = admin_pb2.CreateClientRequest(
            tenant=form.get("tenant", "").strip(), name=form.get("name", ""), scopes=scopes
        )
        try:
            reply = await view.call("Admin/CreateClient", request)
        except FORM_REFUSALS as exc:
            status, errors = refusal(exc, CLIENT_FIELDS, missing="tenant")
            return await show_clients(view, status, create=(form, scopes, errors))
        client = reply.client
        flash(
            view.session.flash,
            f"Client {client.name} created for tenant {client.tenant}; its id is "
            f"{client.client_id}. Copy the secret now: it is not shown again.",
            {"new-client-secret": reply.client_secret},
        )
        raise go("clients", client.tenant)

    async def set_client_quota(view: View) -> web.StreamResponse:
        form, _ = await posted(view)
        client_id = form.get("client_id", "")
        try:
            quota = quota_of(form, "rpm", "tpm", required=True)
            request = admin_pb2.SetQuotaRequest(client_id=client_id, quota=quota)
            await view.call("Admin/SetQuota", request)
        except FORM_REFUSALS as exc:
            status, errors = refusal(
                exc, CLIENT_QUOTA_FIELDS, CLIENT_QUOTA_ALIASES, missing="client_id"
            )
            return await show_clients(view, status, quota=(form, errors))
        flash(view.session.flash, f"The limits of client {client_id} are set.")
        raise go("clients", form.get("tenant", ""))

    async def delete_client(view: View) -> web.StreamResponse:
        form, _ = await posted(view)
        client_id = form.get("client_id", "")
        await view.call("Admin/DeleteClient", admin_pb2.DeleteClientRequest(client_id=client_id))
        flash(view.session.flash, f"Client {client_id} deleted: its secret no longer works.")
        raise go("clients", form.get("tenant", ""))

    console.page("GET", "/console/admin/api-keys", ADMIN, keys)
    console.page("POST", "/console/admin/api-keys", ADMIN, create_key)
    console.page("POST", "/console/admin/api-keys/revoke", ADMIN, revoke_key)
    console.page("GET", "/console/admin/clients", ADMIN, clients)
    console.page("POST", "/console/admin/clients", ADMIN, create_client)
    console.page("POST", "/console/admin/clients/quota", ADMIN, set_client_quota)
    console.page("POST", "/console/admin/clients/delete", ADMIN, delete_client)
