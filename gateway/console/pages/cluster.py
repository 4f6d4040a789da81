"""The cluster, live: workers with their load, slots, models and tokens/s, queues by
class and tenant, tokens served by tenant, and the person's running jobs. The rows are
`llmos top`'s (`llmos.cluster_view`), from the same calls; the page refreshes them
every two seconds, and tokens/s is the difference to the session's previous poll."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.auth.scopes import CLUSTER_READ, TRAINING
from gateway.console.app import Console
from gateway.console.view import View
from llmos.cluster_view import Poll, job_rows, queue_rows, tenant_rates, tenant_rows, worker_rows
from llmos.errors import LLMOSError
from llmos.v1 import common_pb2, scheduler_pb2

MEMO = "cluster.poll"


async def _poll(view: View) -> Poll:
    cluster = await view.call("Gateway/GetClusterStatus", scheduler_pb2.GetClusterStatusRequest())
    jobs: list[scheduler_pb2.Job] = []
    notes: list[str] = []
    if view.may(TRAINING):
        try:
            listed = await view.call(
                "Gateway/ListJobs",
                scheduler_pb2.ListJobsRequest(states=[common_pb2.JOB_STATE_RUNNING]),
            )
            jobs = list(listed.jobs)
        except LLMOSError as exc:
            notes.append(f"running jobs: {exc}")
    return Poll(at=time.time(), cluster=cluster, jobs=jobs, notes=notes)


def register(console: Console) -> None:
    async def tables(view: View) -> dict[str, Any]:
        current = await _poll(view)
        previous: Poll | None = view.session.memo.get(MEMO)
        view.session.memo[MEMO] = current
        rates = tenant_rates(previous, current)
        cluster = current.cluster
        return {
            "poll": current,
            "total_rate": f"{sum(rates.values()):.1f}" if previous is not None else "-",
            "sections": [
                ("Workers", worker_rows(cluster, previous, current.at)),
                ("Queues", queue_rows(cluster)),
                ("Tenants", tenant_rows(cluster, rates, previous is not None)),
                ("Running jobs", job_rows(current.jobs)),
            ],
        }

    async def show(view: View) -> web.StreamResponse:
        return view.render("cluster.html", **await tables(view))

    async def live(view: View) -> web.StreamResponse:
        return view.render("cluster_live.html", **await tables(view))

    console.page("GET", "/console/cluster", CLUSTER_READ, show)
    console.page("GET", "/console/cluster/live", CLUSTER_READ, live)
