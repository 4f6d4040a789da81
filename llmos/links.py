"""Channels to internal services found in the registry (the gateway relays to the
scheduler and storage through them; workers fetch models from storage).

A link finds a live instance of its service in the registry, keeps the channel while
calls succeed, and looks again after the instance became unreachable (a restarted or
replaced service). Refusals of the service are relayed as they are; an unreachable one
becomes UNAVAILABLE with a sentence, never a hang.

Every channel is mutual TLS with this process's identity, and the server must prove it
is the service looked for (`llmos.identity`); a renewed identity gets new channels. The
gateway also vouches for each call with a tenant assertion (`Links.vouch`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from llmos.errors import Unavailable
from llmos.identity import ServiceIdentity, secure_channel
from llmos.registry import ServiceRegistry
from llmos.rpc import relayed_error

DEFAULT_TIMEOUT_S = 30.0
RETIRE_GRACE_S = 300.0

#: (target service, request) -> metadata to send with the call
Vouch = Callable[[str, Any], Sequence[tuple[str, str]]]


class NoDeadline:
    """The context of a ServiceLink call made outside any RPC (a background task, or
    work a caller's own deadline already bounds): it allows the longest wait."""

    def time_remaining(self) -> float:
        return 600.0


@dataclass
class Links:
    """How this process reaches the others: where they are, and who it is."""

    registry: ServiceRegistry
    identity: ServiceIdentity
    #: the gateway's tenant assertions; None: calls go in this service's own name
    vouch: Vouch | None = None

    def to(self, service: str, stub: Callable[[grpc.aio.Channel], Any]) -> ServiceLink:
        return ServiceLink(self, service, stub)


class ServiceLink:
    """Calls into one internal service through whichever instance is alive."""

    def __init__(self, links: Links, service: str, stub: Callable[[grpc.aio.Channel], Any]) -> None:
        self._links = links
        self._service = service
        self._make_stub = stub
        self._channel: grpc.aio.Channel | None = None
        self._generation = -1
        self._closing: set[asyncio.Task[None]] = set()

    def _retire(self, channel: grpc.aio.Channel) -> None:
        """Close `channel` in the background: calls under way (a long download) get
        RETIRE_GRACE_S to finish on it, while new calls use the new one at once."""
        task = asyncio.create_task(channel.close(grace=RETIRE_GRACE_S))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def stub(self) -> Any:
        identity = self._links.identity
        if self._channel is not None and self._generation != identity.generation:
            self._retire(self._channel)  # a renewed certificate: a new channel presents it
            self._channel = None
        if self._channel is None:
            instances = [
                i for i in await self._links.registry.live_instances() if i.service == self._service
            ]
            if not instances:
                raise Unavailable(f"no {self._service} is running")
            address = sorted(i.address for i in instances)[0]
            if self._channel is None:  # another call may have opened one meanwhile
                self._generation = identity.generation
                self._channel = secure_channel(
                    identity,
                    address,
                    self._service,
                    [("grpc.max_receive_message_length", 16 << 20)],
                )
        return self._make_stub(self._channel)

    def _metadata(self, request: Any) -> Sequence[tuple[str, str]] | None:
        vouch = self._links.vouch
        return vouch(self._service, request) if vouch else None

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
                request,
                timeout=context.time_remaining() or default_timeout_s,
                metadata=self._metadata(request),
            )
        except grpc.aio.AioRpcError as exc:
            raise await self.failed(exc) from None

    async def stream(self, method: str, request: Any, context: Any) -> AsyncIterator[Any]:
        """A server-streaming call, relayed message by message."""
        stub = await self.stub()
        try:
            call = getattr(stub, method)(
                request, timeout=context.time_remaining(), metadata=self._metadata(request)
            )
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise await self.failed(exc) from None
