"""`llmos status`, `llmos cluster` and `llmos events`: what is running, and what happens."""

from __future__ import annotations

from typing import Annotated

import typer

from llmos.cli.connection import connection
from llmos.cli.errors import EXIT_NOT_READY, EXIT_OK
from llmos.cli.output import JsonAlias, Listing, OutputOption, message_json, show, styled
from llmos.subjects import EVENT_KINDS
from llmos.v1 import gateway_pb2, scheduler_pb2


def status_listing(status: gateway_pb2.SystemStatus) -> Listing:
    """One row per service instance, then the services with none; readiness below."""
    state_name = gateway_pb2.ServiceStatus.State.Name
    listing = Listing(("SERVICE", "STATE", "ADDRESS", "INSTANCE", "DETAIL"))
    for s in status.services:
        state = state_name(s.state).removeprefix("STATE_")
        listing.rows.append(
            (
                s.instance.service,
                styled(state, state == "SERVING"),
                s.instance.address,
                s.instance.instance_id,
                s.detail,
            )
        )
    for name in status.missing_services:
        listing.rows.append((name, styled("MISSING", False), "-", "-", "no instance registered"))
    listing.footer.append(f"LLM OS is {'ready' if status.ready else 'NOT ready'}")
    return listing


def status(ctx: typer.Context, output: OutputOption = "table", json: JsonAlias = False) -> None:
    """Health of every service, read through the gateway (exit status 1 when not ready)."""
    conn = connection(ctx)
    reply = conn.gateway_stub().GetSystemStatus(
        gateway_pb2.GetSystemStatusRequest(), timeout=conn.timeout
    )
    show(reply, status_listing(reply), "json" if json else output)
    raise typer.Exit(EXIT_OK if reply.ready else EXIT_NOT_READY)


def cluster_listing(status: scheduler_pb2.ClusterStatus) -> Listing:
    """Workers with capacity, live use, slots and models; queue depth and fair share below."""
    listing = Listing(
        ("SERVICE", "INSTANCE", "CPU USED/CORES", "MEMORY USED/TOTAL", "SLOTS FREE", "MODELS")
    )
    for worker in status.workers:
        cap, use = worker.capacity, worker.in_use
        listing.rows.append(
            (
                worker.instance.service,
                worker.instance.instance_id,
                f"{use.cpu_millicores / 1000:.2f}/{cap.cpu_millicores / 1000:g}",
                f"{use.memory_bytes / 2**30:.2f}/{cap.memory_bytes / 2**30:.1f} GiB",
                f"{worker.free_slots}/{worker.slots}",
                ",".join(worker.loaded_models) or "-",
            )
        )
    listing.footer.append(f"queued generations: {status.queued_requests}")
    for tenant, tokens in sorted(status.tokens_served_by_tenant.items()):
        listing.footer.append(f"tokens served to {tenant}: {tokens}")
    return listing


def cluster(ctx: typer.Context, output: OutputOption = "table", json: JsonAlias = False) -> None:
    """Workers with their capacity, live use, slots and models; queue depth; fair share."""
    conn = connection(ctx)
    reply = conn.gateway_stub().GetClusterStatus(
        scheduler_pb2.GetClusterStatusRequest(), timeout=conn.timeout
    )
    show(reply, cluster_listing(reply), "json" if json else output)


def events(
    ctx: typer.Context,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KIND",
            help=f"only events of this kind: {', '.join(EVENT_KINDS)} (repeatable)",
        ),
    ] = None,
) -> None:
    """Follow events as JSON lines (one per event) until interrupted."""
    request = gateway_pb2.SubscribeEventsRequest(kinds=kind or [])
    for event in connection(ctx).gateway_stub().SubscribeEvents(request):
        print(message_json(event, indent=None), flush=True)
