"""llmos.v1.Applications on the gateway: entities, translation, knowledge bases, Ask.

The applications are gateway code over the platform's own calls (the workers' task
models, the gateway's Chat and Embed, storage), so each runs under the same guard as
every public call: scope, tenant, limits, audit and metrics come with it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING

import grpc
import numpy as np

from gateway.apps.assistant import Assistant
from gateway.apps.conversations import Conversations
from gateway.apps.entities import EntityExtractor
from gateway.apps.knowledge import KnowledgeBases, Vectors, describe
from gateway.apps.llm import ChatModel
from gateway.apps.translation import Translator
from gateway.auth.principal import call_record, caller, inner_call
from gateway.inference import work_id
from gateway.metrics import APP_LATENCY, APP_TEXTS
from llmos.errors import InvalidArgument
from llmos.runner import ServiceContext
from llmos.v1 import apps_pb2, apps_pb2_grpc, gateway_pb2
from llmos.workers import WorkerTable

if TYPE_CHECKING:
    from gateway.servicer import GatewayServicer


class ApplicationsServicer(apps_pb2_grpc.ApplicationsServicer):  # type: ignore[misc]
    """Implements llmos.v1.Applications."""

    def __init__(self, ctx: ServiceContext, gateway: GatewayServicer, workers: WorkerTable) -> None:
        self._gateway = gateway
        chat = ChatModel(gateway)
        router, deployments = gateway.router, gateway.deployments
        self._entities = EntityExtractor(router, deployments, chat)
        self._translator = Translator(router, deployments, chat, workers)
        self._bases = KnowledgeBases(ctx.links, self._embed)
        self._assistant = Assistant(
            self._bases, chat, self._embed, Conversations(ctx.redis), ctx.events, deployments
        )

    async def _embed(self, model: str, texts: list[str]) -> Vectors:
        """Vectors of `texts` by the gateway's own Embed (its checks, cache and tokens)."""
        request = gateway_pb2.EmbedRequest(model=model, inputs=texts)
        with inner_call():
            answer = await self._gateway.Embed(request, None)
        return np.array([list(e.values) for e in answer.embeddings], dtype=np.float32)

    async def ExtractEntities(
        self, request: apps_pb2.ExtractEntitiesRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.ExtractEntitiesResponse:
        started = time.monotonic()
        answer = await self._entities.extract(request, work_id())
        _counted("entities", answer.model, len(request.texts), started)
        return answer

    async def Translate(
        self, request: apps_pb2.TranslateRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.TranslateResponse:
        started = time.monotonic()
        answer = await self._translator.translate(request, work_id())
        _counted("translation", answer.model, len(request.texts), started)
        return answer

    async def CreateKnowledgeBase(
        self, request: apps_pb2.CreateKnowledgeBaseRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.KnowledgeBase:
        call_record().resource = f"knowledge_base/{request.name}"
        tenant = caller().tenant
        try:  # the served name: later deployments of the name must not mix vector spaces
            model = await self._gateway.deployments.resolve(tenant, request.embedding_model)
        except InvalidArgument as exc:
            raise InvalidArgument("embedding_model", exc.reason) from None
        base = await self._bases.create(tenant, request.name, request.description, model)
        return describe(base)

    async def GetKnowledgeBase(
        self, request: apps_pb2.GetKnowledgeBaseRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.KnowledgeBase:
        call_record().resource = f"knowledge_base/{request.name}"
        return describe(await self._bases.get(caller().tenant, request.name))

    async def ListKnowledgeBases(
        self, request: apps_pb2.ListKnowledgeBasesRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.ListKnowledgeBasesResponse:
        call_record().resource = "knowledge_bases"
        bases = await self._bases.every(caller().tenant)
        return apps_pb2.ListKnowledgeBasesResponse(knowledge_bases=[describe(b) for b in bases])

    async def DeleteKnowledgeBase(
        self, request: apps_pb2.GetKnowledgeBaseRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.KnowledgeBase:
        call_record().resource = f"knowledge_base/{request.name}"
        return describe(await self._bases.delete(caller().tenant, request.name))

    async def AddDocuments(
        self, request: apps_pb2.AddDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> apps_pb2.KnowledgeBase:
        call_record().resource = f"knowledge_base/{request.knowledge_base}"
        base = await self._bases.add(
            caller().tenant, request.knowledge_base, list(request.documents)
        )
        return describe(base)

    async def Ask(
        self, request: apps_pb2.AskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[apps_pb2.AskResponse, None]:
        started = time.monotonic()
        async with aclosing(self._assistant.ask(request)) as answer:  # closed with the call
            async for response in answer:
                yield response
        APP_LATENCY.labels("assistant").observe(time.monotonic() - started)


def _counted(app: str, model: str, texts: int, started: float) -> None:
    APP_TEXTS.labels(app, caller().tenant, model).inc(texts)
    APP_LATENCY.labels(app).observe(time.monotonic() - started)
