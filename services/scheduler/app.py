"""The scheduler's API. For now: the live cluster view from the service registry (which
workers exist and which models they have loaded). Queues, capacity accounting and
placement arrive with the scheduler issue; until then queue depths are zero because
nothing is queued here: inference goes straight to workers over NATS."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack

import grpc

from llmos.runner import ServiceContext
from llmos.v1 import scheduler_pb2, scheduler_pb2_grpc

WORKER_SERVICES = ("inference-worker", "trainer")


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):  # type: ignore[misc]
    def __init__(self, ctx: ServiceContext) -> None:
        self._registry = ctx.registry

    async def GetClusterStatus(
        self, request: scheduler_pb2.GetClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ClusterStatus:
        instances = await self._registry.live_instances()
        return scheduler_pb2.ClusterStatus(
            workers=[
                scheduler_pb2.WorkerStatus(instance=i, loaded_models=i.models)
                for i in instances
                if i.service in WORKER_SERVICES
            ]
        )


async def attach(
    ctx: ServiceContext, server: grpc.aio.Server, stack: AsyncExitStack
) -> Sequence[str]:
    """Register the scheduler's API."""
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(SchedulerServicer(ctx), server)
    return [scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name]
