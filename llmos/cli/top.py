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
from datetime import UTC, datetime
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
from llmos.priority import PriorityClass
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
class Poll:
    """What one refresh read from the gateway; `notes` say which parts it may not read."""

    at: float  # seconds since the epoch
    cluster: scheduler_pb2.ClusterStatus
    jobs: Sequence[scheduler_pb2.Job] = ()  # running, the caller's tenant's
    system: gateway_pb2.SystemStatus | None = None
    notes: Sequence[str] = ()


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
        until = f" until {_clock(i.until.ToSeconds())}" if i.HasField("until") else ""
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
    rates = _rates(previous, current)
    total = _rate(sum(rates.values())) if previous is not None else "-"
    summary = (
        f"llmos top  {_clock(current.at)} UTC  {len(cluster.workers)} workers  "
        f"{cluster.queued_requests} generations and {cluster.queued_jobs} jobs queued  "
        f"{total} tokens/s"
    )
    parts: list[RenderableType] = [Text(summary, style="bold")]
    parts += _section("WORKERS", _workers(cluster, previous, current.at), boxed)
    parts += _section("QUEUES", _queues(cluster), boxed)
    parts += _section("TENANTS", _tenants(cluster, rates, previous is not None), boxed)
    parts += _section("RUNNING JOBS", _jobs(current.jobs), boxed)
    alert_rows = [("now", text) for text in problems(current)]
    alert_rows += [(_clock(a.at), a.text) for a in sorted(alerts, key=lambda a: -a.at)]
    parts += _section("ALERTS", (("WHEN", "WHAT"), alert_rows[:ALERTS]), boxed)
    return Group(*parts)


Rows = tuple[Sequence[str], Sequence[Sequence[str]]]


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


def _workers(cluster: scheduler_pb2.ClusterStatus, previous: Poll | None, at: float) -> Rows:
    headers = (
        "INSTANCE", "CPU USED/CORES", "MEMORY GiB", "GPU", "SLOTS BUSY", "TOKENS/S", "MODELS",
        "JOBS",
    )  # fmt: skip
    before = {
        w.instance.instance_id: w.generated_tokens
        for w in (previous.cluster.workers if previous is not None else ())
    }
    seconds = at - previous.at if previous is not None else 0.0
    rows = []
    for w in cluster.workers:
        rate = "-"  # one poll, a trainer, or a worker new since the last poll
        earlier = before.get(w.instance.instance_id)
        if w.instance.service == "inference-worker" and seconds > 0 and earlier is not None:
            rate = _rate(max(0, w.generated_tokens - earlier) / seconds)
        cap, use = w.capacity, w.in_use
        gpu = "-"
        if cap.gpus:
            gpu = (f"{use.gpus}/{cap.gpus} {use.gpu_memory_bytes / 2**30:.1f}/"
                   f"{cap.gpu_memory_bytes / 2**30:.0f} GiB")  # fmt: skip
        rows.append((
            w.instance.instance_id,
            f"{use.cpu_millicores / 1000:.2f}/{cap.cpu_millicores / 1000:g}",
            f"{use.memory_bytes / 2**30:.2f}/{cap.memory_bytes / 2**30:.1f}",
            gpu,
            f"{w.slots - w.free_slots}/{w.slots}",
            rate,
            ",".join(w.loaded_models) or "-",
            ",".join(w.running_jobs) or "-",
        ))  # fmt: skip
    return headers, rows


def _queues(cluster: scheduler_pb2.ClusterStatus) -> Rows:
    rows = [
        (PriorityClass.parse(q.priority).word, q.tenant or "(others)",
         str(q.generations), str(q.jobs))
        for q in cluster.queues
    ]  # fmt: skip
    return ("CLASS", "TENANT", "GENERATIONS", "JOBS"), rows


def _tenants(cluster: scheduler_pb2.ClusterStatus, rates: dict[str, float], rated: bool) -> Rows:
    rows = [
        (tenant, str(tokens), _rate(rates.get(tenant, 0.0)) if rated else "-")
        for tenant, tokens in sorted(cluster.tokens_served_by_tenant.items())
    ]
    return ("TENANT", "TOKENS SERVED", "TOKENS/S"), rows


def _jobs(jobs: Sequence[scheduler_pb2.Job]) -> Rows:
    headers = ("JOB", "NAME", "STEP", "LOSS", "VAL LOSS", "TOKENS/S", "ETA", "ON")
    rows = []
    for job in jobs:
        p = job.progress
        rows.append((
            job.job_id, job.spec.name, f"{p.step}/{p.total_steps or '?'}",
            f"{p.loss:.4f}" if p.step else "-", f"{p.val_loss:.4f}" if p.val_loss else "-",
            _rate(p.tokens_per_s) if p.step else "-", _duration(p.eta_s) if p.step else "-",
            ",".join(place.instance_id for place in job.placement) or "-",
        ))  # fmt: skip
    return headers, rows


def _rates(previous: Poll | None, current: Poll) -> dict[str, float]:
    """Tokens/s per tenant between two polls (counters restart with a scheduler: >= 0)."""
    if previous is None or current.at <= previous.at:
        return {}
    seconds = current.at - previous.at
    before = previous.cluster.tokens_served_by_tenant
    return {
        tenant: max(0, tokens - before.get(tenant, 0)) / seconds
        for tenant, tokens in current.cluster.tokens_served_by_tenant.items()
    }


def _rate(per_s: float) -> str:
    return f"{per_s:.1f}" if per_s < 100 else f"{per_s:.0f}"


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _clock(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%H:%M:%S")


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
