"""`llmos admin ...`: tenants, clients, users, quotas and keys (scope `admin`), and the
storage service's backups, key and quotas (admins of the `system` tenant)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from google.protobuf.message import Message

from llmos.cli import api_keys, blocks
from llmos.cli.connection import Connection, connection
from llmos.cli.errors import CommandError
from llmos.cli.identity import claims
from llmos.cli.output import Listing, OutputOption, message_json, show
from llmos.cli.prompts import secret_lines
from llmos.keyfiles import new_private_file
from llmos.oauthclient import credentials_json
from llmos.v1 import admin_pb2, storage_pb2

app = typer.Typer(
    help="Manage tenants, clients, users, quotas, keys and storage backups.",
    no_args_is_help=True,
)
app.add_typer(blocks.app, name="blocks")
app.add_typer(api_keys.app, name="api-key")

Rpm = Annotated[int | None, typer.Option(help="requests per minute (0: unlimited)")]
Tpm = Annotated[int | None, typer.Option(help="model tokens per minute (0: unlimited)")]
Tenant = Annotated[str, typer.Option(help="the tenant (default: yours)")]
Scopes = Annotated[
    list[str] | None, typer.Option("--scope", metavar="SCOPE", help="scope to grant (repeatable)")
]


def _quota(rpm: int | None, tpm: int | None) -> admin_pb2.Quota | None:
    if rpm is None and tpm is None:
        return None
    return admin_pb2.Quota(requests_per_minute=rpm or 0, tokens_per_minute=tpm or 0)


def _print(reply: Message) -> None:
    print(message_json(reply))


def _one_of(*pairs: tuple[str, str, str | None]) -> dict[str, str]:
    """The request field of the one flag given, of flags that exclude each other; each
    pair is (flag, field, value)."""
    chosen = {field: value for _, field, value in pairs if value}
    if len(chosen) != 1:
        raise CommandError(f"give exactly one of {' and '.join(flag for flag, _, _ in pairs)}")
    return chosen


@app.command("tenant-create")
def tenant_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="the new tenant's name")],
    rpm: Rpm = None,
    tpm: Tpm = None,
) -> None:
    """Create a tenant (limits default to the gateway's)."""
    conn = connection(ctx)
    request = admin_pb2.CreateTenantRequest(name=name, quota=_quota(rpm, tpm))
    _print(conn.admin_stub().CreateTenant(request, timeout=conn.timeout))


def _limit(value: int) -> str:
    return str(value) if value else "unlimited"


@app.command("tenant-list")
def tenant_list(ctx: typer.Context, output: OutputOption = "table") -> None:
    """Tenants with their limits."""
    conn = connection(ctx)
    reply = conn.admin_stub().ListTenants(admin_pb2.ListTenantsRequest(), timeout=conn.timeout)
    listing = Listing(("TENANT", "REQUESTS/MIN", "TOKENS/MIN", "CRITICAL"))
    for t in reply.tenants:
        listing.rows.append(
            (
                t.name,
                _limit(t.quota.requests_per_minute),
                _limit(t.quota.tokens_per_minute),
                "granted" if t.critical_priority else "-",
            )
        )
    show(reply, listing, output)


@app.command("critical-grant")
def critical_grant(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument(help="the tenant")],
    withdraw: Annotated[bool, typer.Option(help="take the grant away instead")] = False,
) -> None:
    """Let a tenant use priority class critical, which overtakes every queue and preempts
    other tenants' training jobs (admins of `system` only)."""
    conn = connection(ctx)
    request = admin_pb2.SetPriorityGrantRequest(tenant=tenant, critical=not withdraw)
    _print(conn.admin_stub().SetPriorityGrant(request, timeout=conn.timeout))


def _credentials_issuer(conn: Connection) -> str:
    """The issuer a saved client will get tokens from: --issuer or $LLMOS_ISSUER, else the
    one that issued this command's own token, else the dev stack's."""
    url = conn.issuer or os.environ.get("LLMOS_ISSUER") or claims(conn.bearer()).get("iss")
    url = url or conn.issuer_url()
    if not url:
        raise CommandError("which issuer will the client use? pass --issuer URL")
    return str(url)


@app.command("client-create")
def client_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="what the client is for")],
    tenant: Tenant = "",
    scope: Scopes = None,
    save: Annotated[
        Path | None,
        typer.Option(
            help="write a credentials file (for --credentials; mode 0600, never overwritten) "
            "instead of printing the secret"
        ),
    ] = None,
) -> None:
    """Create a program's client id and secret (the secret is shown, or saved, once)."""
    conn = connection(ctx)
    request = admin_pb2.CreateClientRequest(tenant=tenant, name=name, scopes=scope or [])
    if save is None:
        _print(conn.admin_stub().CreateClient(request, timeout=conn.timeout))
        return
    issuer = _credentials_issuer(conn)
    with contextlib.ExitStack() as stack:
        try:  # taken before the secret exists, so a refusal loses nothing
            file = stack.enter_context(new_private_file(save))
        except FileExistsError:
            raise CommandError(f"{save} exists already; the credentials go to a new file") from None
        reply = conn.admin_stub().CreateClient(request, timeout=conn.timeout)
        file.write(credentials_json(issuer, reply.client.client_id, reply.client_secret))
    reply.client_secret = ""
    _print(reply)
    print(f"credentials written to {save} (readable by you only)", file=sys.stderr)


def _clients_listing(reply: admin_pb2.ListClientsResponse) -> Listing:
    listing = Listing(("CLIENT", "TENANT", "NAME", "SCOPES", "REQUESTS/MIN", "TOKENS/MIN"))
    for c in reply.clients:
        listing.rows.append(
            (c.client_id, c.tenant, c.name, ",".join(c.scopes) or "-",
             _limit(c.quota.requests_per_minute), _limit(c.quota.tokens_per_minute))
        )  # fmt: skip
    return listing


@app.command("client-list")
def client_list(ctx: typer.Context, tenant: Tenant = "", output: OutputOption = "table") -> None:
    """A tenant's clients (never their secrets)."""
    conn = connection(ctx)
    request = admin_pb2.ListClientsRequest(tenant=tenant)
    reply = conn.admin_stub().ListClients(request, timeout=conn.timeout)
    show(reply, _clients_listing(reply), output)


@app.command("client-delete")
def client_delete(
    ctx: typer.Context, client_id: Annotated[str, typer.Argument(help="the client's id")]
) -> None:
    """Delete a client: its secret stops working."""
    conn = connection(ctx)
    request = admin_pb2.DeleteClientRequest(client_id=client_id)
    _print(conn.admin_stub().DeleteClient(request, timeout=conn.timeout))


@app.command("user-create")
def user_create(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="the person's user name")],
    tenant: Tenant = "",
    scope: Scopes = None,
) -> None:
    """Create a person; prints their TOTP secret and otpauth:// URI, once.

    The password is read from the terminal, or from the first line of stdin."""
    (password,) = secret_lines(["password for the new user"], sys.stdin)
    conn = connection(ctx)
    request = admin_pb2.CreateUserRequest(
        tenant=tenant, username=username, password=password, scopes=scope or []
    )
    _print(conn.admin_stub().CreateUser(request, timeout=conn.timeout))


@app.command("user-list")
def user_list(ctx: typer.Context, tenant: Tenant = "", output: OutputOption = "table") -> None:
    """A tenant's users."""
    conn = connection(ctx)
    reply = conn.admin_stub().ListUsers(
        admin_pb2.ListUsersRequest(tenant=tenant), timeout=conn.timeout
    )
    listing = Listing(("USER", "TENANT", "SCOPES"))
    for u in reply.users:
        listing.rows.append((u.username, u.tenant, ",".join(u.scopes) or "-"))
    show(reply, listing, output)


@app.command("user-delete")
def user_delete(
    ctx: typer.Context, username: Annotated[str, typer.Argument(help="the person's user name")]
) -> None:
    """Delete a user: they can no longer sign in."""
    conn = connection(ctx)
    request = admin_pb2.DeleteUserRequest(username=username)
    _print(conn.admin_stub().DeleteUser(request, timeout=conn.timeout))


@app.command()
def quota(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="set this tenant's limits")] = None,
    client: Annotated[str | None, typer.Option(help="set this client's limits")] = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
) -> None:
    """Set a tenant's or a client's limits."""
    target = _one_of(("--tenant", "tenant", tenant), ("--client", "client_id", client))
    conn = connection(ctx)
    request = admin_pb2.SetQuotaRequest(quota=_quota(rpm, tpm) or admin_pb2.Quota(), **target)
    _print(conn.admin_stub().SetQuota(request, timeout=conn.timeout))


@app.command()
def scopes(
    ctx: typer.Context,
    client: Annotated[str | None, typer.Option(help="this client's scopes")] = None,
    user: Annotated[str | None, typer.Option(help="this user's scopes")] = None,
    scope: Scopes = None,
) -> None:
    """Replace a client's or a user's scopes."""
    target = _one_of(("--client", "client_id", client), ("--user", "username", user))
    conn = connection(ctx)
    request = admin_pb2.SetScopesRequest(scopes=scope or [], **target)
    _print(conn.admin_stub().SetScopes(request, timeout=conn.timeout))


@app.command("rotate-key")
def rotate_key(
    ctx: typer.Context,
    which: Annotated[
        Literal["signing", "storage"], typer.Argument(help="signing (default) or storage")
    ] = "signing",
) -> None:
    """Rotate the token-signing key (default) or storage's key-encryption key.

    signing: tokens signed with the old key stay valid until they expire. storage: every
    data key is re-wrapped under the new key while serving; no data is re-encrypted."""
    conn = connection(ctx)
    if which == "storage":
        reply: Message = conn.storage_stub().RotateStorageKey(
            storage_pb2.RotateStorageKeyRequest(), timeout=conn.timeout
        )
    else:
        reply = conn.admin_stub().RotateSigningKey(
            admin_pb2.RotateSigningKeyRequest(), timeout=conn.timeout
        )
    _print(reply)


StoragePath = Annotated[str, typer.Argument(help="a folder on the storage service's host")]


@app.command()
def backup(ctx: typer.Context, path: StoragePath) -> None:
    """A consistent online snapshot of storage into PATH (on its host)."""
    conn = connection(ctx)
    request = storage_pb2.BackupStorageRequest(path=path)
    _print(conn.storage_stub().BackupStorage(request, timeout=conn.timeout))


@app.command()
def restore(ctx: typer.Context, path: StoragePath) -> None:
    """Bring a fresh storage service back to the backup at PATH."""
    conn = connection(ctx)
    request = storage_pb2.RestoreStorageRequest(path=path)
    _print(conn.storage_stub().RestoreStorage(request, timeout=conn.timeout))


@app.command("rotate-storage-key")
def rotate_storage_key(ctx: typer.Context) -> None:
    """The same as: rotate-key storage."""
    rotate_key(ctx, "storage")


@app.command("storage-quota")
def storage_quota(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Argument(help="the tenant")],
    bytes_: Annotated[int, typer.Argument(metavar="bytes", help="bytes it may store")],
) -> None:
    """Set how many bytes a tenant may store."""
    conn = connection(ctx)
    request = storage_pb2.SetStorageQuotaRequest(tenant=tenant, bytes=bytes_)
    _print(conn.storage_stub().SetStorageQuota(request, timeout=conn.timeout))
