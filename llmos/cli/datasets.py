"""`llmos datasets upload|list|describe|delete`: the tenant's datasets in storage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmos.cli.connection import connection
from llmos.cli.output import Listing, OutputOption, message_json, show
from llmos.cli.transfer import upload_file
from llmos.v1 import storage_pb2

app = typer.Typer(help="Upload, list, describe and delete datasets.", no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="the dataset's name in your tenant")]


@app.command()
def upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the file to upload (resumable)")],
    name: Name,
    description: Annotated[str, typer.Option(help="what the dataset is")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress line")] = False,
) -> None:
    """Upload a file as a dataset (resumed if the stream breaks); prints the dataset."""
    conn = connection(ctx)
    stub = conn.storage_stub()
    blob = upload_file(stub, file, conn.timeout, quiet)
    request = storage_pb2.CreateDatasetRequest(
        name=name, sha256=blob.sha256, description=description
    )
    print(message_json(stub.CreateDataset(request, timeout=conn.timeout)))


def datasets_listing(reply: storage_pb2.ListDatasetsResponse) -> Listing:
    """One row per dataset."""
    listing = Listing(("NAME", "BYTES", "RECORDS", "SHA256", "DESCRIPTION"))
    for d in reply.datasets:
        listing.rows.append((d.name, str(d.size), str(d.records), d.sha256, d.description))
    return listing


@app.command("list")
def list_(ctx: typer.Context, output: OutputOption = "table") -> None:
    """The tenant's datasets: size, records (lines), digest."""
    conn = connection(ctx)
    reply = conn.storage_stub().ListDatasets(
        storage_pb2.ListDatasetsRequest(), timeout=conn.timeout
    )
    show(reply, datasets_listing(reply), output)


@app.command()
def describe(ctx: typer.Context, name: Name) -> None:
    """One dataset: size, records, digest, description (JSON)."""
    conn = connection(ctx)
    request = storage_pb2.GetDatasetRequest(name=name)
    print(message_json(conn.storage_stub().GetDataset(request, timeout=conn.timeout)))


@app.command()
def delete(ctx: typer.Context, name: Name) -> None:
    """Delete a dataset, and its data with it."""
    conn = connection(ctx)
    request = storage_pb2.GetDatasetRequest(name=name)
    print(message_json(conn.storage_stub().DeleteDataset(request, timeout=conn.timeout)))
