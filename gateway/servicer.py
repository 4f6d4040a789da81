"""The public gRPC API (transport only): parse, delegate, answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AsyncExitStack, aclosing
from typing import Any

import grpc

from gateway.admin import AdminServicer
from gateway.apps.servicer import ApplicationsServicer
from gateway.audit import AuditRelay
from gateway.auth.http import http_app, serve_http
from gateway.auth.principal import CallRecord, call_record, caller
from gateway.cache import ResponseCache
from gateway.deployments import Deployer, Deployments
from gateway.inference import InferenceRouter, work_id
from gateway.metrics import observe_generation
from gateway.priorities import check_priority, needs_grant
from gateway.runtime import GatewayRuntime, server_tls
from gateway.status import service_status, system_status
from gateway.storage import StorageRelay
from gateway.storage import add_to_server as add_storage_relay
from gateway.validation import (
    check_classification,
    check_embed_inputs,
    check_messages,
    check_prompt,
    checked_params,
)
from llmos import subjects, tracing
from llmos.errors import InvalidArgument
from llmos.generation import SamplingParams
from llmos.health import check_health
from llmos.log import request_id_var
from llmos.model.names import DEFAULT_MODEL, visible_to
from llmos.priority import PriorityClass
from llmos.runner import ServiceContext
from llmos.services import REQUIRED_SERVICES
from llmos.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    apps_pb2,
    apps_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    events_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
    storage_pb2,
)
from llmos.workers import INFERENCE_WORKER, WorkerTable

log = logging.getLogger("llmos.gateway")

HEALTH_TIMEOUT_S = 2.0
#: a rough prompt size in tokens for fair-share estimates (settled with the true count)
CHARS_PER_TOKEN = 4
EVENT_BUFFER = 1024


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):  # type: ignore[misc]
    """Implements llmos.v1.Gateway over the shared service context."""

    def __init__(self, ctx: ServiceContext, runtime: GatewayRuntime, workers: WorkerTable) -> None:
        self._ctx = ctx
        self._workers = workers  # from the workers' heartbeats, as the scheduler's
        self._cache = runtime.cache
        self._identities = runtime.store
        ca = runtime.options.tls_ca
        self._tls_ca = ca.read_bytes() if ca else None
        self._deployments = Deployments(ctx.redis)
        self._deployer = Deployer(
            ctx.links, self._deployments, max_per_tenant=runtime.options.max_deployments
        )
        self._router = InferenceRouter(ctx)
        self._scheduler = ctx.links.to("scheduler", scheduler_pb2_grpc.SchedulerStub)

    @property
    def router(self) -> InferenceRouter:
        """How work reaches the workers (the applications send theirs the same way)."""
        return self._router

    @property
    def deployments(self) -> Deployments:
        """Which model a name means for a tenant."""
        return self._deployments

    async def GetSystemStatus(
        self, request: gateway_pb2.GetSystemStatusRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.SystemStatus:
        instances = await self._ctx.registry.live_instances()
        answers = await asyncio.gather(
            *(
                check_health(
                    i.address,
                    timeout_s=HEALTH_TIMEOUT_S,
                    tls_ca=self._tls_ca if i.tls else None,
                    identity=None if i.service == "gateway" else self._ctx.identity,
                    server=i.service,
                )
                for i in instances
            )
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
        principal = caller()
        queue: asyncio.Queue[events_pb2.Event] = asyncio.Queue(maxsize=EVENT_BUFFER)

        async def on_message(msg: object) -> None:
            event = events_pb2.Event.FromString(msg.data)  # type: ignore[attr-defined]
            if event.tenant != principal.tenant and not principal.is_system_admin:
                return  # another tenant's event, or a system event: not for this caller
            if queue.full():  # a slow subscriber loses oldest events, never stalls NATS
                queue.get_nowait()
            queue.put_nowait(event)

        subscriptions = [
            await self._ctx.nats.subscribe(subject, cb=on_message)
            for subject in wanted or [subjects.ALL_EVENTS]
        ]
        try:
            while True:
                yield await queue.get()
        finally:
            for subscription in subscriptions:
                await subscription.unsubscribe()

    # -- inference ------------------------------------------------------------------------

    async def _model(self, requested: str) -> str:
        """The model to use (resolved and checked), recorded as the call's resource."""
        model = await self._deployments.resolve(caller().tenant, requested)
        call_record().resource = f"model/{model}"
        return model

    async def _check_priority(self, priority: PriorityClass, field: str) -> None:
        """PERMISSION_DENIED naming `field` unless the caller's tenant may use `priority`."""
        principal = caller()
        granted = needs_grant(principal, priority) and await asyncio.to_thread(
            self._identities.may_use_critical, principal.tenant
        )
        check_priority(principal, priority, granted, field)

    async def DeployModel(
        self, request: gateway_pb2.DeployModelRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.Deployment:
        return await self._deployer.deploy(request, context)

    async def _generate(
        self, kind: str, request: Any, params: inference_pb2.GenerationParams, **source: Any
    ) -> AsyncGenerator[gateway_pb2.GenerateResponse]:
        """Stream a generation from `source` (prompt= or chat=) after checking params.
        Greedy generations are deterministic, so they are cached (per tenant)."""
        sampling = checked_params(params)
        priority = PriorityClass.parse(request.priority)
        await self._check_priority(priority, "priority")
        model = await self._model(request.model)
        call = call_record()
        chat = source.get("chat")
        call.prompt = source.get("prompt") or "\n".join(
            f"{m.role}: {m.content}" for m in (chat.messages if chat else ())
        )
        key = ResponseCache.key(caller().tenant, kind, model, request) if sampling.greedy else ""
        if key and (hit := await self._cache.get(key, gateway_pb2.GenerateResponse)):
            call.cached = True
            call.output = hit.text
            hit.cached = True
            yield hit
            return
        work = inference_pb2.GenerateWork(
            request_id=work_id(),
            tenant=caller().tenant,
            model=model,
            params=params,
            **source,
        )
        span = tracing.start(
            f"gateway {kind}",
            tracing.incoming.get(),
            tracing.SpanKind.SERVER,
            attributes={
                tracing.REQUEST_ID: request_id_var.get(),
                tracing.WORK_ID: work.request_id,
                "llmos.tenant": work.tenant,
                "llmos.model": model,
            },
        )
        work.traceparent = tracing.traceparent(span)
        stream = self._stream(work, model, priority, sampling, call, key)
        with span:
            async with aclosing(stream):  # a caller gone stops the work now, not at GC
                async for response in stream:
                    yield response

    async def _stream(
        self,
        work: inference_pb2.GenerateWork,
        model: str,
        priority: PriorityClass,
        sampling: SamplingParams,
        call: CallRecord,
        key: str,
    ) -> AsyncGenerator[gateway_pb2.GenerateResponse]:
        """The generation's chunks as responses, counted, charged and cached at the end."""
        whole = gateway_pb2.GenerateResponse(model=model)
        prompt_chars = len(work.prompt) + sum(len(m.content) for m in work.chat.messages)
        prompt_estimate = max(1, prompt_chars // CHARS_PER_TOKEN)
        generation = self._router.generate(
            work,
            priority=int(priority),
            cost=prompt_estimate + sampling.max_tokens,
        )
        async for chunk in generation:
            response = gateway_pb2.GenerateResponse(
                text=chunk.text,
                token_ids=chunk.token_ids,
                done=chunk.done,
                finish_reason=chunk.finish_reason,
                usage=chunk.usage if chunk.done else None,
                timings=chunk.timings if chunk.done else None,
                model=model,
                logprobs=chunk.logprobs,
            )
            whole.text += chunk.text
            whole.logprobs.extend(chunk.logprobs)
            call.output = whole.text
            whole.token_ids.extend(chunk.token_ids)
            # kept current as tokens arrive, so a caller who goes away before the last
            # chunk (which alone carries the exact usage) still pays for what it used
            call.tokens = prompt_estimate + len(whole.token_ids)
            if chunk.done:
                call.tokens = chunk.usage.prompt_tokens + chunk.usage.completion_tokens
                observe_generation(caller().tenant, model, chunk.usage, chunk.timings)
                whole.MergeFrom(
                    gateway_pb2.GenerateResponse(
                        done=True,
                        finish_reason=chunk.finish_reason,
                        usage=chunk.usage,
                        timings=chunk.timings,
                    )
                )
            yield response
        if key and whole.done and whole.finish_reason != "cancelled":
            await self._cache.put(key, whole)

    async def Generate(
        self, request: gateway_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        check_prompt(request.prompt)
        generation = self._generate("generate", request, request.params, prompt=request.prompt)
        async with aclosing(generation):
            async for response in generation:
                yield response

    async def Chat(
        self, request: gateway_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        check_messages(list(request.messages))
        chat = inference_pb2.ChatTranscript(messages=request.messages)
        generation = self._generate("chat", request, request.params, chat=chat)
        async with aclosing(generation):
            async for response in generation:
                yield response

    async def Embed(
        self, request: gateway_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.EmbedResponse:
        check_embed_inputs(list(request.inputs))
        model = await self._model(request.model)
        key = ResponseCache.key(caller().tenant, "embed", model, request)
        if hit := await self._cache.get(key, gateway_pb2.EmbedResponse):
            call_record().cached = hit.cached = True
            return hit
        result = await self._router.embed(
            inference_pb2.EmbedWork(request_id=work_id(), model=model, inputs=request.inputs)
        )
        call_record().tokens = result.prompt_tokens
        answer = gateway_pb2.EmbedResponse(
            embeddings=result.embeddings,
            usage=inference_pb2.Usage(prompt_tokens=result.prompt_tokens),
            model=model,
        )
        await self._cache.put(key, answer)
        return answer

    async def Classify(
        self, request: gateway_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ClassifyResponse:
        check_classification(request.text, list(request.labels))
        model = await self._model(request.model)
        key = ResponseCache.key(caller().tenant, "classify", model, request)
        if hit := await self._cache.get(key, gateway_pb2.ClassifyResponse):
            call_record().cached = hit.cached = True
            return hit
        result = await self._router.classify(
            inference_pb2.ClassifyWork(
                request_id=work_id(),
                model=model,
                text=request.text,
                labels=request.labels,
            )
        )
        call_record().tokens = result.prompt_tokens
        answer = gateway_pb2.ClassifyResponse(
            scores=result.scores,
            model=model,
            usage=inference_pb2.Usage(prompt_tokens=result.prompt_tokens),
        )
        await self._cache.put(key, answer)
        return answer

    async def ListModels(
        self, request: gateway_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListModelsResponse:
        principal = caller()
        served = Counter(
            model
            for worker in self._workers.alive(time.monotonic(), INFERENCE_WORKER)
            for model in worker.loaded_models
            if principal.is_system_admin or visible_to(model, principal.tenant)
        )
        return gateway_pb2.ListModelsResponse(
            models=[
                gateway_pb2.ModelInfo(name=name, workers=count, default=name == DEFAULT_MODEL)
                for name, count in sorted(served.items())
            ]
        )

    async def GetClusterStatus(
        self, request: scheduler_pb2.GetClusterStatusRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ClusterStatus:
        status: scheduler_pb2.ClusterStatus = await self._ask_scheduler(
            "GetClusterStatus", request, context
        )
        return status

    # -- jobs: the scheduler's, scoped to the caller's tenant ----------------------------------

    async def SubmitJob(
        self, request: scheduler_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.Job:
        principal = caller()
        request.tenant, request.owner = principal.tenant, principal.subject
        await self._check_priority(
            PriorityClass.parse(request.spec.priority, "spec.priority"), "spec.priority"
        )
        with tracing.start(
            "gateway SubmitJob",
            tracing.incoming.get(),
            tracing.SpanKind.SERVER,
            attributes={tracing.REQUEST_ID: request_id_var.get(), "llmos.tenant": request.tenant},
        ) as span:
            request.traceparent = tracing.traceparent(span)
            job: scheduler_pb2.Job = await self._ask_scheduler("SubmitJob", request, context)
            span.set_attribute(tracing.JOB_ID, job.job_id)
        call_record().resource = f"job/{job.job_id}"
        return job

    async def GetJob(
        self, request: scheduler_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.Job:
        request.tenant = caller().tenant
        call_record().resource = f"job/{request.job_id}"
        job: scheduler_pb2.Job = await self._ask_scheduler("GetJob", request, context)
        return job

    async def ListJobs(
        self, request: scheduler_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListJobsResponse:
        request.tenant = caller().tenant
        jobs: scheduler_pb2.ListJobsResponse = await self._ask_scheduler(
            "ListJobs", request, context
        )
        return jobs

    async def CancelJob(
        self, request: scheduler_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.Job:
        request.tenant = caller().tenant
        call_record().resource = f"job/{request.job_id}"
        job: scheduler_pb2.Job = await self._ask_scheduler("CancelJob", request, context)
        return job

    async def WatchJob(
        self, request: scheduler_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scheduler_pb2.Job]:
        request.tenant = caller().tenant
        call_record().resource = f"job/{request.job_id}"
        async for job in self._scheduler.stream("WatchJob", request, context):
            yield job

    async def _ask_scheduler(self, method: str, request: Any, context: Any) -> Any:
        return await self._scheduler.ask(method, request, context)


async def _serve_http(
    runtime: GatewayRuntime, servicers: dict[str, Any], stack: AsyncExitStack
) -> None:
    """The HTTP endpoints on the listener `prepare` bound: the built-in issuer's (with
    its sign-in page and the console, which need it), and the OpenAI-compatible API over
    the gRPC servicer."""
    from gateway.apps.http import ApplicationsHttp
    from gateway.console.routes import console_routes  # they import this module
    from gateway.openai.http import OpenAIHttp

    app = http_app(runtime.detector, runtime.options.max_request_bytes)
    openai = OpenAIHttp(servicers["Gateway"], runtime.guard)
    apps = ApplicationsHttp(servicers["Applications"], openai)
    if runtime.oauth is not None:
        runtime.oauth.add_routes(app)
        console_routes(app, runtime, servicers, openai, apps)
    apps.add_routes(app)
    openai.add_routes(app)
    runner = await serve_http(app, runtime.http_listener, server_tls(runtime.options))
    stack.push_async_callback(runner.cleanup)
    log.info("OpenAI-compatible API ready", extra={"openai": f"{runtime.http_url}/v1"})


async def attach(
    ctx: ServiceContext, server: grpc.aio.Server, stack: AsyncExitStack
) -> Sequence[str]:
    """Register the public API and the admin API on the gateway's server."""
    runtime: GatewayRuntime = ctx.runtime
    workers = WorkerTable()
    heartbeats = await workers.follow(ctx.nats)
    stack.push_async_callback(heartbeats.unsubscribe)
    gateway = GatewayServicer(ctx, runtime, workers)
    servicers: dict[str, Any] = {
        "Gateway": gateway,
        "Applications": ApplicationsServicer(ctx, gateway, workers),
        "Storage": StorageRelay(ctx.links),
        "Audit": AuditRelay(ctx.links),
        "Admin": AdminServicer(
            runtime.store,
            runtime.api_keys,
            runtime.keyring,
            runtime.firewall,
            runtime.options.intrusion.block_s,
        ),
    }
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicers["Gateway"], server)
    apps_pb2_grpc.add_ApplicationsServicer_to_server(servicers["Applications"], server)
    add_storage_relay(servicers["Storage"], server)
    audit_pb2_grpc.add_AuditServicer_to_server(servicers["Audit"], server)
    admin_pb2_grpc.add_AdminServicer_to_server(servicers["Admin"], server)
    await _serve_http(runtime, servicers, stack)
    return [
        gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name,
        apps_pb2.DESCRIPTOR.services_by_name["Applications"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        storage_pb2.DESCRIPTOR.services_by_name["Storage"].full_name,
        audit_pb2.DESCRIPTOR.services_by_name["Audit"].full_name,
    ]
