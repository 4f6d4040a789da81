"""`llmos jobs list|get|cancel|watch`: the tenant's jobs."""

from __future__ import annotations

from typing import Annotated

import typer

from llmos.cli.connection import connection
from llmos.cli.output import Listing, OutputOption, message_json, show, styled
from llmos.cluster_view import state_of
from llmos.v1 import scheduler_pb2

app = typer.Typer(help="List, show, cancel or watch jobs.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(help="the job's id")]
FAILED = ("FAILED", "CANCELLED")


def job_line(job: scheduler_pb2.Job) -> str:
    """One line about a job: id, state, name and why it is in that state."""
    return f"{job.job_id}  {state_of(job):<10} {job.spec.name}  ({job.reason})"


def jobs_listing(reply: scheduler_pb2.ListJobsResponse) -> Listing:
    """One row per job, newest first as the scheduler lists them."""
    listing = Listing(("JOB", "STATE", "NAME", "RESULT", "REASON"))
    for job in reply.jobs:
        state = state_of(job)
        listing.rows.append(
            (job.job_id, styled(state, state not in FAILED), job.spec.name,
             job.result or "-", job.reason)
        )  # fmt: skip
    return listing


@app.command("list")
def list_(ctx: typer.Context, output: OutputOption = "table") -> None:
    """The tenant's jobs, newest first."""
    conn = connection(ctx)
    reply = conn.gateway_stub().ListJobs(scheduler_pb2.ListJobsRequest(), timeout=conn.timeout)
    show(reply, jobs_listing(reply), output)


@app.command()
def get(ctx: typer.Context, job_id: JobId) -> None:
    """One job, in full (JSON)."""
    conn = connection(ctx)
    request = scheduler_pb2.GetJobRequest(job_id=job_id)
    print(message_json(conn.gateway_stub().GetJob(request, timeout=conn.timeout)))


@app.command()
def cancel(ctx: typer.Context, job_id: JobId) -> None:
    """Cancel a job (a running one checkpoints and stops)."""
    conn = connection(ctx)
    request = scheduler_pb2.CancelJobRequest(job_id=job_id)
    print(job_line(conn.gateway_stub().CancelJob(request, timeout=conn.timeout)))


@app.command()
def watch(ctx: typer.Context, job_id: JobId) -> None:
    """Follow a job: a line at each change, until it ends or you interrupt."""
    request = scheduler_pb2.GetJobRequest(job_id=job_id)
    for job in connection(ctx).gateway_stub().WatchJob(request):
        print(job_line(job), flush=True)
