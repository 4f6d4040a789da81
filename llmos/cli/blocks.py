"""`llmos admin blocks ...`: the gateway's blocklist (admins of the `system` tenant):
what intrusion detection blocked and why, and blocking or lifting by hand."""

from __future__ import annotations

from typing import Annotated

import typer

from llmos.cli.connection import connection
from llmos.cli.errors import CommandError
from llmos.cli.output import Listing, OutputOption, message_json, show, utc_time
from llmos.v1 import admin_pb2

app = typer.Typer(
    help="Addresses and principals refused at the gateway's door.", no_args_is_help=True
)

Address = Annotated[str, typer.Option(help="a client address (IPv4 or IPv6)")]
Who = Annotated[str, typer.Option(help="a principal: user:<username> or client:<client_id>")]


def _target(address: str, principal: str) -> admin_pb2.BlockTarget:
    if bool(address) == bool(principal):
        raise CommandError("give exactly one of --address and --principal")
    if address:
        return admin_pb2.BlockTarget(address=address)
    return admin_pb2.BlockTarget(principal=principal)


@app.command("list")
def blocks_list(ctx: typer.Context, output: OutputOption = "table") -> None:
    """Blocks in force, soonest to end first."""
    conn = connection(ctx)
    reply = conn.admin_stub().ListBlocks(admin_pb2.ListBlocksRequest(), timeout=conn.timeout)
    listing = Listing(("TARGET", "UNTIL", "SIGNAL", "BY", "REASON"))
    for b in reply.blocks:
        which = b.target.WhichOneof("target") or ""
        listing.rows.append(
            (
                f"{which} {getattr(b.target, which, '')}",
                utc_time(b.until.seconds),
                b.signal,
                b.blocked_by,
                b.reason,
            )
        )
    show(reply, listing, output)


@app.command("block")
def blocks_block(
    ctx: typer.Context,
    address: Address = "",
    principal: Who = "",
    duration: Annotated[
        int, typer.Option("--for", help="seconds (0: the gateway's block lifetime)")
    ] = 0,
    reason: Annotated[str, typer.Option(help="why, for the refusal and the list")] = "",
) -> None:
    """Block an address or a principal at the door."""
    conn = connection(ctx)
    request = admin_pb2.BlockRequest(
        target=_target(address, principal), duration_s=duration, reason=reason
    )
    print(message_json(conn.admin_stub().Block(request, timeout=conn.timeout)))


@app.command("unblock")
def blocks_unblock(ctx: typer.Context, address: Address = "", principal: Who = "") -> None:
    """Lift a block (refused, exit 2, if there was none)."""
    conn = connection(ctx)
    request = admin_pb2.UnblockRequest(target=_target(address, principal))
    reply = conn.admin_stub().Unblock(request, timeout=conn.timeout)
    if not reply.removed:
        raise CommandError("it was not blocked")
    print("unblocked")
