"""The public gRPC API (transport only): parse, delegate, answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack

import grpc

from gateway.status import service_status, system_status
from llmos import subjects
from llmos.errors import InvalidArgument
from llmos.health import check_health
from llmos.runner import ServiceContext
from llmos.services import REQUIRED_SERVICES
from llmos.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc

HEALTH_TIMEOUT_S = 2.0
EVENT_BUFFER = 1024


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):  # type: ignore[misc]
    """Implements llmos.v1.Gateway over the shared service context."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    async def GetSystemStatus(
        self, request: gateway_pb2.GetSystemStatusRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.SystemStatus:
        instances = await self._ctx.registry.live_instances()
        answers = await asyncio.gather(
            *(check_health(i.address, timeout_s=HEALTH_TIMEOUT_S) for i in instances)
        )
        return system_status(
            (
                service_status(i, state, detail)
                for i, (state, detail) in zip(instances, answers, strict=True)
            ),
            REQUIRED_SERVICES,
        )

    async def SubscribeEvents(
        self, request: gateway_pb2.SubscribeEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.Event]:
        wanted = []
        for index, kind in enumerate(request.kinds):
            try:
                wanted.append(subjects.events_of_kind(kind))
            except ValueError as exc:
                raise InvalidArgument(f"kinds[{index}]", str(exc)) from None
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=EVENT_BUFFER)

        async def on_message(msg: object) -> None:
            data: bytes = msg.data  # type: ignore[attr-defined]
            if queue.full():  # a slow subscriber loses oldest events, never stalls NATS
                queue.get_nowait()
            queue.put_nowait(data)

        subscriptions = [
            await self._ctx.nats.subscribe(subject, cb=on_message)
            for subject in wanted or [subjects.ALL_EVENTS]
        ]
        try:
            while True:
                yield events_pb2.Event.FromString(await queue.get())
        finally:
            for subscription in subscriptions:
                await subscription.unsubscribe()


async def attach(
    ctx: ServiceContext, server: grpc.aio.Server, stack: AsyncExitStack
) -> Sequence[str]:
    """Register the public API on the gateway's server."""
    gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(ctx), server)
    return [gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name]
