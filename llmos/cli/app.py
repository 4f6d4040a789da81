"""The `llmos` command's tree: the global options (given before the command, as in
`llmos --gateway HOST:PORT status`) and each area's commands, from their own modules."""

from __future__ import annotations

from typing import Annotated

import typer

from llmos.cli import (
    admin,
    apps,
    audit,
    chat,
    datasets,
    identity,
    inference,
    jobs,
    models,
    system,
    top,
)
from llmos.cli.connection import DEFAULT_GATEWAY, Connection
from llmos.cli.train import train

app = typer.Typer(
    name="llmos",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def options(
    ctx: typer.Context,
    gateway: Annotated[
        str | None,
        typer.Option(
            help=f"HOST:PORT of the gateway (default: $LLMOS_GATEWAY, the dev stack's, "
            f"else {DEFAULT_GATEWAY})"
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds each call may take")] = 120.0,
    token: Annotated[
        str | None, typer.Option(help="an access token to use as is ($LLMOS_TOKEN)")
    ] = None,
    credentials: Annotated[
        str | None,
        typer.Option(
            help="JSON file with issuer, client_id and client_secret ($LLMOS_CREDENTIALS)"
        ),
    ] = None,
    ca_file: Annotated[
        str | None,
        typer.Option(help="CA certificate that signed the gateway's, for TLS ($LLMOS_TLS_CA)"),
    ] = None,
    issuer: Annotated[
        str | None, typer.Option(help="OAuth issuer URL, for login ($LLMOS_ISSUER)")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="allow sending credentials in plaintext to a gateway or issuer on this "
            "machine (loopback only; $LLMOS_INSECURE=1)",
        ),
    ] = False,
) -> None:
    """Client of LLM OS: inference, chat, models, datasets, training jobs, audit and
    administration, through the gateway."""
    conn = ctx.ensure_object(Connection)
    conn.gateway, conn.timeout, conn.token = gateway, timeout, token
    conn.credentials, conn.ca_file, conn.issuer = credentials, ca_file, issuer
    conn.insecure = insecure
    ctx.call_on_close(conn.close)


for command in (identity.login, identity.logout, identity.whoami):
    app.command()(command)
app.add_typer(admin.app, name="admin")
app.command()(system.cluster)
app.command()(top.top)
app.add_typer(jobs.app, name="jobs")
app.command()(system.status)
app.command()(system.events)
app.command()(inference.generate)
app.command()(chat.chat)
app.command()(inference.embed)
app.command()(inference.classify)
app.command()(apps.entities)
app.command()(apps.translate)
app.add_typer(apps.app, name="kb")
app.add_typer(models.app, name="models")
app.add_typer(datasets.app, name="datasets")
app.command()(train)
app.add_typer(audit.app, name="audit")
