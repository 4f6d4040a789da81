"""The public gRPC API (transport only): parse, delegate, answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from typing import Any

import grpc

from gateway.inference import InferenceRouter, ModelCatalog
from gateway.status import service_status, system_status
from gateway.validation import (
    check_classification,
    check_embed_inputs,
    check_messages,
    check_prompt,
    checked_params,
)
from llmos import subjects
from llmos.errors import InvalidArgument
from llmos.health import check_health
from llmos.log import request_id_var
from llmos.model.names import DEFAULT_MODEL
from llmos.runner import ServiceContext
from llmos.services import REQUIRED_SERVICES
from llmos.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc, inference_pb2

HEALTH_TIMEOUT_S = 2.0
EVENT_BUFFER = 1024


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):  # type: ignore[misc]
    """Implements llmos.v1.Gateway over the shared service context."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._models = ModelCatalog(ctx.registry)
        self._router = InferenceRouter(ctx)

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

    # -- inference ------------------------------------------------------------------------

    async def _generate(
        self, model: str, params: inference_pb2.GenerationParams, **source: Any
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        """Stream a generation from `source` (prompt= or chat=) after checking params."""
        checked_params(params)
        work = inference_pb2.GenerateWork(
            request_id=request_id_var.get(),
            model=await self._models.resolve(model),
            params=params,
            **source,
        )
        async for chunk in self._router.generate(work):
            yield gateway_pb2.GenerateResponse(
                text=chunk.text,
                token_ids=chunk.token_ids,
                done=chunk.done,
                finish_reason=chunk.finish_reason,
                usage=chunk.usage if chunk.done else None,
                timings=chunk.timings if chunk.done else None,
                model=work.model,
            )

    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        check_prompt(request.prompt)
        async for response in self._generate(request.model, request.params, prompt=request.prompt):
            yield response

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        check_messages(list(request.messages))
        chat = inference_pb2.ChatTranscript(messages=request.messages)
        async for response in self._generate(request.model, request.params, chat=chat):
            yield response

    async def Embed(
        self, request: gateway_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.EmbedResponse:
        check_embed_inputs(list(request.inputs))
        model = await self._models.resolve(request.model)
        result = await self._router.embed(
            inference_pb2.EmbedWork(
                request_id=request_id_var.get(), model=model, inputs=request.inputs
            )
        )
        return gateway_pb2.EmbedResponse(
            embeddings=result.embeddings,
            usage=inference_pb2.Usage(prompt_tokens=result.prompt_tokens),
            model=model,
        )

    async def Classify(
        self, request: gateway_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ClassifyResponse:
        check_classification(request.text, list(request.labels))
        model = await self._models.resolve(request.model)
        result = await self._router.classify(
            inference_pb2.ClassifyWork(
                request_id=request_id_var.get(),
                model=model,
                text=request.text,
                labels=request.labels,
            )
        )
        return gateway_pb2.ClassifyResponse(scores=result.scores, model=model)

    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListModelsResponse:
        served = await self._models.served()
        return gateway_pb2.ListModelsResponse(
            models=[
                gateway_pb2.ModelInfo(name=name, workers=count, default=name == DEFAULT_MODEL)
                for name, count in sorted(served.items())
            ]
        )


async def attach(
    ctx: ServiceContext, server: grpc.aio.Server, stack: AsyncExitStack
) -> Sequence[str]:
    """Register the public API on the gateway's server."""
    gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(ctx), server)
    return [gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name]
