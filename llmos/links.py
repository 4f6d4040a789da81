"""Channels to internal services found in the registry (the gateway relays to the
scheduler and storage through them; workers fetch models from storage).

A link finds a live instance of its service in the registry, keeps the channel while
calls succeed, and looks again after the instance became unreachable (a restarted or
replaced service). Refusals of the service are relayed as they are; an unreachable one
becomes UNAVAILABLE with a sentence, never a hang.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from llmos.errors import Unavailable
from llmos.registry import ServiceRegistry
from llmos.rpc import relayed_error

DEFAULT_TIMEOUT_S = 30.0


class ServiceLink:
    """Calls into one internal service through whichever instance is alive."""

    def __init__(
        self, registry: ServiceRegistry, service: str, stub: Callable[[grpc.aio.Channel], Any]
    ) -> None:
        self._registry = registry
        self._service = service
        self._make_stub = stub
        self._channel: grpc.aio.Channel | None = None

    async def stub(self) -> Any:
        if self._channel is None:
            instances = [
                i for i in await self._registry.live_instances() if i.service == self._service
            ]
            if not instances:
                raise Unavailable(f"no {self._service} is running")
            address = sorted(i.address for i in instances)[0]
            self._channel = grpc.aio.insecure_channel(
                address, options=[("grpc.max_receive_message_length", 16 << 20)]
            )
        return self._make_stub(self._channel)

    async def failed(self, exc: grpc.aio.AioRpcError) -> Exception:
        """The error to answer with; an unreachable service is looked up again next time."""
        if exc.code() == grpc.StatusCode.UNAVAILABLE and self._channel is not None:
            await self._channel.close()
            self._channel = None
            return Unavailable(f"the {self._service} service is not reachable right now; retry")
        return relayed_error(exc)

    async def ask(
        self, method: str, request: Any, context: Any, default_timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> Any:
        """One unary (or client-streaming: pass an iterator) call, within the caller's
        deadline (`default_timeout_s` if it set none)."""
        stub = await self.stub()
        try:
            return await getattr(stub, method)(
                request, timeout=context.time_remaining() or default_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise await self.failed(exc) from None

    async def stream(self, method: str, request: Any, context: Any) -> AsyncIterator[Any]:
        """A server-streaming call, relayed message by message."""
        stub = await self.stub()
        try:
            async for message in getattr(stub, method)(request, timeout=context.time_remaining()):
                yield message
        except grpc.aio.AioRpcError as exc:
            raise await self.failed(exc) from None
