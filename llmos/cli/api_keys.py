"""`llmos admin api-key ...`: long-lived API keys for programs (the OpenAI SDKs and
other tools that send one fixed bearer). The key is printed once; only its hash is kept."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from llmos.cli.connection import connection
from llmos.cli.errors import CommandError
from llmos.cli.output import Listing, OutputOption, message_json, show, utc_time
from llmos.v1 import admin_pb2

app = typer.Typer(help="Long-lived API keys: create, list, revoke.", no_args_is_help=True)

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_s(text: str) -> int:
    """`30d`, `12h`, `90m`, `3600s`, `2w` -> seconds; `never` -> 0."""
    if text == "never":
        return 0
    match = _DURATION.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise CommandError(f"--expires {text!r}: give a duration like 30d, 12h, 90m or 'never'")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


@app.command("create")
def create(
    ctx: typer.Context,
    scope: Annotated[
        list[str], typer.Option("--scope", metavar="SCOPE", help="scope to grant (repeatable)")
    ],
    tenant: Annotated[str, typer.Option(help="the tenant (default: yours)")] = "",
    name: Annotated[str, typer.Option(help="what the key is for")] = "api key",
    expires: Annotated[
        str, typer.Option(help="lifetime: 30d, 12h, 90m, 3600s, 2w, or never")
    ] = "never",
    rpm: Annotated[int, typer.Option(help="the key's requests per minute (0: unlimited)")] = 0,
    tpm: Annotated[int, typer.Option(help="the key's model tokens per minute (0: unlimited)")] = 0,
    quiet: Annotated[bool, typer.Option(help="print only the key (for scripts)")] = False,
) -> None:
    """Create an API key; the key (`key`) is shown this once and cannot be read again."""
    conn = connection(ctx)
    request = admin_pb2.CreateApiKeyRequest(
        tenant=tenant,
        name=name,
        scopes=scope,
        expires_in_s=duration_s(expires),
        quota=admin_pb2.Quota(requests_per_minute=rpm, tokens_per_minute=tpm),
    )
    reply = conn.admin_stub().CreateApiKey(request, timeout=conn.timeout)
    print(reply.key if quiet else message_json(reply))


@app.command("list")
def list_keys(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="the tenant (default: yours)")] = "",
    output: OutputOption = "table",
) -> None:
    """A tenant's API keys (never the keys themselves)."""
    conn = connection(ctx)
    reply = conn.admin_stub().ListApiKeys(
        admin_pb2.ListApiKeysRequest(tenant=tenant), timeout=conn.timeout
    )
    listing = Listing(("KEY ID", "TENANT", "NAME", "SCOPES", "EXPIRES", "REQ/MIN", "TOK/MIN"))
    for k in reply.api_keys:
        expires = utc_time(k.expires_at.seconds) if k.expires_at.seconds else "never"
        listing.rows.append(
            (k.key_id, k.tenant, k.name, ",".join(k.scopes), expires,
             str(k.quota.requests_per_minute or "-"), str(k.quota.tokens_per_minute or "-"))
        )  # fmt: skip
    show(reply, listing, output)


@app.command("revoke")
def revoke(
    ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="the key's id (k…)")]
) -> None:
    """Revoke an API key: every gateway refuses it from its next call."""
    conn = connection(ctx)
    request = admin_pb2.RevokeApiKeyRequest(key_id=key_id)
    conn.admin_stub().RevokeApiKey(request, timeout=conn.timeout)
    print(f"API key {key_id} revoked")
