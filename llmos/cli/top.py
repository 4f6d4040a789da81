"""`llmos top`: the cluster on one screen, refreshed each second until Ctrl-C.

Each refresh polls the gateway (GetClusterStatus, the caller's running jobs, and the
services' health) into a `Poll`; `frame` turns polls and alerts into what is shown, with
no I/O, so it is tested without servers. Alerts come from the event stream (services
stopping, intrusion blocks, the audit log falling behind, jobs failed or preempted),
followed in a thread, and from comparing polls (a worker that dropped out without a
word). Tokens/s is the difference
between two polls of the fair-share counters (per tenant) and of each worker's generated
tokens (its heartbeat's count): `--once` polls once and shows '-'.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC
from types import TracebackType
from typing import Annotated

import grpc
import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from llmos.cli.connection import connection
from llmos.cli.output import PIPE_WIDTH
from llmos.cluster_view import (
    Poll,
    Rows,
    clock_text,
    job_rows,
    queue_rows,
    rate_text,
    tenant_rates,
    tenant_rows,
    worker_rows,
)
from llmos.v1 import common_pb2, events_pb2, gateway_pb2, gateway_pb2_grpc, scheduler_pb2

#: alerts kept and shown, newest first
ALERTS = 8
#: a refresh that waits longer than this for a reply is late: show the error, poll again
LIVE_CALL_TIMEOUT_S = 5.0
ALERT_KINDS = ("service", "job", "security")
RUNNING = common_pb2.JOB_STATE_RUNNING
ALERT_STATES = {common_pb2.JOB_STATE_FAILED: "failed", common_pb2.JOB_STATE_PREEMPTED: "preempted"}
SERVING = gateway_pb2.ServiceStatus.STATE_SERVING
Phase = events_pb2.ServiceLifecycle.Phase


@dataclass(frozen=True)
class Alert:
    """Something an operator should notice, and when it happened."""

    at: float
    text: str


def alert_of(event: events_pb2.Event, received_at: float) -> Alert | None:
    """The alert an event raises: a service stopping, an intrusion blocked, the audit log
    behind or caught up, a job that failed or was preempted; None for the rest
    (progress, starts, ...). It is dated by the event's time, else by when it was
    received."""
    at = event.time.ToDatetime(tzinfo=UTC).timestamp() if event.HasField("time") else received_at
    kind = event.WhichOneof("payload")
    if kind == "service_lifecycle":
        life = event.service_lifecycle
        if life.phase not in (Phase.PHASE_STOPPING, Phase.PHASE_STOPPED):
            return None
        word = Phase.Name(life.phase).removeprefix("PHASE_").lower()
        reason = f" ({life.reason})" if life.reason else ""
        return Alert(at, f"{life.instance.instance_id or life.instance.service} {word}{reason}")
    if kind == "intrusion":
        i = event.intrusion
        who = i.address or i.principal
        until = f" until {clock_text(i.until.ToSeconds())}" if i.HasField("until") else ""
        return Alert(at, f"intrusion: {who} blocked{until} ({i.count} {i.signal} in {i.window_s}s)")
    if kind == "audit_lag":
        lag = event.audit_lag
        if lag.caught_up:
            return Alert(at, "audit log caught up")
        return Alert(at, f"audit log {lag.lag_s:.0f}s behind ({lag.pending} records waiting)")
    if kind == "job_state_changed" and event.job_state_changed.current in ALERT_STATES:
        change = event.job_state_changed
        return Alert(at, f"job {change.job_id} {ALERT_STATES[change.current]}: {change.reason}")
    return None


def workers_lost(previous: Poll | None, current: Poll) -> list[Alert]:
    """Workers of the previous poll that are gone from this one (missed heartbeats)."""
    if previous is None:
        return []
    now = {w.instance.instance_id for w in current.cluster.workers}
    return [
        Alert(current.at, f"worker lost: {w.instance.instance_id} (no heartbeat)")
        for w in previous.cluster.workers
        if w.instance.instance_id not in now
    ]


def problems(poll: Poll) -> list[str]:
    """What is wrong now: services not serving or missing, workers that take no work."""
    found = list(poll.notes)
    if poll.system is not None:
        for s in poll.system.services:
            if s.state != SERVING:
                state = gateway_pb2.ServiceStatus.State.Name(s.state).removeprefix("STATE_")
                found.append(f"{s.instance.instance_id or s.instance.service} {state}: {s.detail}")
        found += [f"{name}: no instance registered" for name in poll.system.missing_services]
    for w in poll.cluster.workers:
        if reason := w.unhealthy:
            found.append(f"{w.instance.instance_id} takes no work: {reason}")
    return found


def frame(
    current: Poll, previous: Poll | None, alerts: Sequence[Alert], boxed: bool = True
) -> RenderableType:
    """One screen: a summary line, then workers, queues, tenants, running jobs, alerts."""
    cluster = current.cluster
    rates = tenant_rates(previous, current)
    total = rate_text(sum(rates.values())) if previous is not None else "-"
    summary = (
        f"llmos top  {clock_text(current.at)} UTC  {len(cluster.workers)} workers  "
        f"{cluster.queued_requests} generations and {cluster.queued_jobs} jobs queued  "
        f"{total} tokens/s"
    )
    parts: list[RenderableType] = [Text(summary, style="bold")]
    parts += _section("WORKERS", worker_rows(cluster, previous, current.at), boxed)
    parts += _section("QUEUES", queue_rows(cluster), boxed)
    parts += _section("TENANTS", tenant_rows(cluster, rates, previous is not None), boxed)
    parts += _section("RUNNING JOBS", job_rows(current.jobs), boxed)
    alert_rows = [("now", text) for text in problems(current)]
    alert_rows += [(clock_text(a.at), a.text) for a in sorted(alerts, key=lambda a: -a.at)]
    parts += _section("ALERTS", (("WHEN", "WHAT"), alert_rows[:ALERTS]), boxed)
    return Group(*parts)


def _section(title: str, rows: Rows, boxed: bool) -> list[RenderableType]:
    headers, body = rows
    if not body:
        return [Text(""), Text(f"{title}: none", style="bold")]
    table = Table(
        box=box.SIMPLE_HEAD if boxed else None, pad_edge=False, show_edge=False,
        header_style="bold" if boxed else "",
    )  # fmt: skip
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="ellipsis")
    for row in body:
        table.add_row(*row)
    return [Text(""), Text(title, style="bold"), table]


def poll(stub: gateway_pb2_grpc.GatewayStub, timeout: float) -> Poll:
    """Read the cluster, the running jobs and the services' health; a part the caller may
    not read (its token lacks the scope) becomes a note instead."""
    cluster = stub.GetClusterStatus(scheduler_pb2.GetClusterStatusRequest(), timeout=timeout)
    notes: list[str] = []
    jobs: Sequence[scheduler_pb2.Job] = ()
    system = None
    try:
        request = scheduler_pb2.ListJobsRequest(states=[RUNNING])
        jobs = stub.ListJobs(request, timeout=timeout).jobs
    except grpc.RpcError as exc:
        notes.append(_refused("running jobs", exc))
    try:
        system = stub.GetSystemStatus(gateway_pb2.GetSystemStatusRequest(), timeout=timeout)
    except grpc.RpcError as exc:
        notes.append(_refused("service health", exc))
    return Poll(time.time(), cluster, jobs, system, notes)


def _refused(what: str, exc: grpc.RpcError) -> str:
    if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
        raise exc
    return f"{what} not shown: {exc.details()}"


@dataclass
class AlertFeed:
    """Alerts from the gateway's event stream, read by a thread of its own while the
    screen refreshes; a context manager that cancels the stream on exit."""

    stub: gateway_pb2_grpc.GatewayStub
    _alerts: deque[Alert] = field(default_factory=lambda: deque(maxlen=ALERTS))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _call: grpc.Future | None = None

    def __enter__(self) -> AlertFeed:
        request = gateway_pb2.SubscribeEventsRequest(kinds=ALERT_KINDS)
        self._call = self.stub.SubscribeEvents(request)
        threading.Thread(target=self._follow, daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._call is not None:
            self._call.cancel()

    def _follow(self) -> None:
        try:
            for event in self._call:  # type: ignore[union-attr]
                if (alert := alert_of(event, time.time())) is not None:
                    self.add(alert)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.add(Alert(time.time(), f"events not followed: {exc.details()}"))

    def add(self, alert: Alert) -> None:
        """Keep `alert` (the oldest goes when there are too many)."""
        with self._lock:
            self._alerts.append(alert)

    def recent(self) -> list[Alert]:
        """The alerts kept, oldest first."""
        with self._lock:
            return list(self._alerts)


def top(
    ctx: typer.Context,
    once: Annotated[
        bool,
        typer.Option("--once", help="print one frame and exit, for scripts (tokens/s shows '-')"),
    ] = False,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 1.0,
) -> None:
    """The cluster live: workers (CPU, memory, GPU, busy slots, tokens/s, loaded models),
    queues by class and tenant, tokens served and tokens/s per tenant (rates are the
    difference between two refreshes), your running jobs (step, loss, ETA) and recent
    alerts. Ctrl-C leaves."""
    conn = connection(ctx)
    stub = conn.gateway_stub()
    first = poll(stub, conn.timeout)  # before the screen is taken: failures read as usual
    if once:
        terminal = sys.stdout.isatty()
        console = Console(width=None if terminal else PIPE_WIDTH, highlight=False)
        console.print(frame(first, None, [], boxed=terminal))
        return
    with contextlib.suppress(KeyboardInterrupt):  # the way to leave: not a failure
        _follow(stub, first, min(conn.timeout, LIVE_CALL_TIMEOUT_S), max(interval, 0.1))


def _follow(
    stub: gateway_pb2_grpc.GatewayStub, first: Poll, timeout: float, interval: float
) -> None:
    previous, current = None, first
    with AlertFeed(stub) as feed, Live(screen=True, auto_refresh=False) as live:
        while True:
            live.update(frame(current, previous, feed.recent()), refresh=True)
            time.sleep(interval)
            try:
                latest = poll(stub, timeout)
            except grpc.RpcError as exc:
                feed.add(Alert(time.time(), f"gateway: {exc.code().name}: {exc.details()}"))
                continue
            for alert in workers_lost(current, latest):
                feed.add(alert)
            previous, current = current, latest
