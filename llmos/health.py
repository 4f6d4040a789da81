"""The standard grpc.health.v1 protocol, told the truth: the server side watches what a
service cannot work without (NATS, Redis, a worker's Triton) and answers NOT_SERVING with
the reason while one is lost; the client side (gateway, launcher, probe) reads it.

The reason travels in the Check answer's trailing metadata (`llmos-health-reason`): the
protocol has no field for it, and a standard client simply ignores it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import Gauge

from llmos.identity import ServiceIdentity, secure_channel

log = logging.getLogger("llmos.health")

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
UNREACHABLE = "UNREACHABLE"

REASON_KEY = "llmos-health-reason"
#: how often dependencies are checked, and how long one check may take
CHECK_EVERY_S = 1.0
CHECK_TIMEOUT_S = 1.5
#: checks in a row that must fail before a service says NOT_SERVING (one slow answer is
#: no outage: every worker going NOT_SERVING at once over it would stop all dispatch)
FAILURES_BEFORE_NOT_SERVING = 2

#: a dependency's check: "" when it is fine, else why not, in a few words
Check = Callable[[], Awaitable[str]]

HEALTHY = Gauge("llmos_healthy", "1 while this service reports SERVING, 0 while NOT_SERVING.")
DEPENDENCY_UP = Gauge(
    "llmos_dependency_up",
    "1 while a dependency this service needs answers (nats, redis, triton), else 0.",
    ["dependency"],
)


async def check_health(
    address: str,
    service: str = "",
    timeout_s: float = 2.0,
    tls_ca: bytes | None = None,
    *,
    identity: ServiceIdentity | None = None,
    server: str = "",
) -> tuple[str, str]:
    """Ask `address` for its health; return (state, sentence) and never raise for I/O.

    An internal server (`server`: its service name) is asked over mutual TLS presenting
    `identity`; the gateway over TLS trusting `tls_ca` when given."""
    if identity is not None:
        channel = secure_channel(identity, address, server)
    elif tls_ca is not None:
        channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(tls_ca))
    else:
        channel = grpc.aio.insecure_channel(address)
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            call = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
            reply = await call
            trailers = await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            return UNREACHABLE, f"health check of {address} failed: {exc.code().name}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if name == SERVING:
        return SERVING, ""
    reason = dict(trailers or ()).get(REASON_KEY, "")
    return NOT_SERVING, f"{address} reports {name}" + (f": {reason}" if reason else "")


class ExplainedHealth(health.aio.HealthServicer):  # type: ignore[misc]  # untyped
    """grpc's health servicer, with the reason for NOT_SERVING in the trailing metadata."""

    reason = ""

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        reply = await super().Check(request, context)
        if self.reason and reply.status != health_pb2.HealthCheckResponse.SERVING:
            context.set_trailing_metadata(((REASON_KEY, self.reason),))
        return reply


class HealthMonitor:
    """Checks a service's dependencies every second and tells the health servicer (and
    Prometheus) when the answer changes; `on_change` callbacks run then too (a worker
    tells the scheduler at once, rather than at its next heartbeat)."""

    def __init__(self, servicer: ExplainedHealth) -> None:
        self.servicer = servicer
        self._checks: dict[str, Check] = {}
        self._names: Sequence[str] = ("",)
        self._on_change: list[Callable[[], Awaitable[None]]] = []
        self._failing = 0  # checks in a row that found a problem
        self.reason = ""

    def watch(self, dependency: str, check: Check) -> None:
        """Check `dependency` from now on."""
        self._checks[dependency] = check
        DEPENDENCY_UP.labels(dependency).set(1)

    def on_change(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_change.append(callback)

    async def start(self, names: Sequence[str]) -> None:
        """Serve `names` (and the whole server, "") as the checks say, from now on."""
        self._names = ("", *names)
        await self._publish(await self._problems())

    async def run(self) -> None:
        """Check forever (cancel to stop)."""
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            reason = await self._problems()
            self._failing = self._failing + 1 if reason else 0
            if reason and self._failing < FAILURES_BEFORE_NOT_SERVING:
                continue
            if reason != self.reason:
                await self._publish(reason)
                for callback in self._on_change:
                    await callback()

    async def _problems(self) -> str:
        """Every failing check's reason, joined ("" when all pass)."""
        dependencies = list(self._checks)
        answers = await asyncio.gather(*(self._check(d) for d in dependencies))
        for dependency, answer in zip(dependencies, answers, strict=True):
            DEPENDENCY_UP.labels(dependency).set(0 if answer else 1)
        return "; ".join(answer for answer in answers if answer)

    async def _check(self, dependency: str) -> str:
        try:
            return await asyncio.wait_for(self._checks[dependency](), CHECK_TIMEOUT_S)
        except TimeoutError:
            return f"{dependency} does not answer"
        except Exception as exc:
            return f"{dependency} check failed: {type(exc).__name__}"

    async def _publish(self, reason: str) -> None:
        if reason:
            log.error("not serving", extra={"reason": reason})
        elif self.reason:
            log.info("serving again")
        self.reason = self.servicer.reason = reason
        HEALTHY.set(0 if reason else 1)
        status = (
            health_pb2.HealthCheckResponse.NOT_SERVING
            if reason
            else health_pb2.HealthCheckResponse.SERVING
        )
        for name in self._names:
            await self.servicer.set(name, status)
