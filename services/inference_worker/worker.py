"""The inference worker's transport layer: NATS work in, Triton calls out, chunks back.

Each served model has three queue-group subscriptions (generate, embed, classify), so
any worker that has the model may take a request. A generation is acknowledged at once
(chunk 0) and then streamed on the requester's reply subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmos import subjects
from llmos.errors import (
    FailedPrecondition,
    InvalidArgument,
    LLMOSError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from llmos.generation import sampling_params_from_proto, sampling_params_to_dict
from llmos.model.limits import read_folder_config
from llmos.model.names import CONFIG, MODEL_NAME, has_model
from llmos.modelstore import ModelStore, fetched_from
from llmos.runner import ServiceContext, report_status
from llmos.v1 import inference_pb2
from llmos.work import work_error
from services.inference_worker.client import GenerateInput, TritonLLMClient
from services.inference_worker.engine.compute import ComputeLoop
from services.inference_worker.options import WorkerOptions
from services.inference_worker.triton_host import EmbeddedTriton
from services.inference_worker.triton_models import ServedModel

log = logging.getLogger("llmos.worker")

#: Triton unloads a decoupled model only once nothing is in flight on it
UNLOAD_TIMEOUT_S = 60.0


class InferenceWorker:
    """Serves the models it has loaded to whoever sends work over NATS."""

    def __init__(
        self,
        ctx: ServiceContext,
        options: WorkerOptions,
        client: TritonLLMClient,
        host: EmbeddedTriton | None,
        compute: ComputeLoop,
    ) -> None:
        self.ctx = ctx
        self.options = options
        self.client = client
        self.host = host
        self.compute = compute
        self.models_dir = options.models_root(ctx.settings.data_dir)
        self.store = ModelStore(ctx.links)
        self._subscriptions: dict[str, list[Subscription]] = {}
        self._inflight: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._cancel_subscription: Subscription | None = None
        self._generate_subscription: Subscription | None = None
        self._lock = asyncio.Lock()

    @property
    def models(self) -> list[str]:
        """Models served right now."""
        return list(self._subscriptions)

    def available_models(self) -> list[str]:
        """Models in the models directory this worker could load now (an embedded Triton
        cannot serve again a model it released)."""
        if not self.models_dir.is_dir():
            return []
        return sorted(
            folder.name
            for folder in self.models_dir.iterdir()
            if MODEL_NAME.match(folder.name)
            and has_model(folder)
            and (self.host is None or self.host.can_serve(folder.name))
        )

    @property
    def free_slots(self) -> int:
        """How many more generations this worker accepts now."""
        return max(self.options.max_inflight - len(self._inflight), 0)

    async def start(self) -> None:
        """Listen for generations the scheduler places here, and for cancellations (any
        worker may hold the request)."""
        self._cancel_subscription = await self.ctx.nats.subscribe(
            subjects.CANCEL_WORK, cb=self._on_cancel
        )
        self._generate_subscription = await self.ctx.nats.subscribe(
            subjects.worker_generate(self.ctx.instance.instance_id), cb=self._on_generate
        )

    async def load(self, model: str, source: tuple[str, str, int] | None = None) -> None:
        """Start serving `model` from the models directory, fetching it from the registry
        first if it is not there (`source`: tenant, registry model, version)."""
        if not MODEL_NAME.match(model):
            raise InvalidArgument("model", "must be lowercase letters, digits, - and _")
        async with self._lock:
            if model in self._subscriptions:
                return
            folder = self.models_dir / model
            if source is not None:
                await self._fetch_deployed(folder, *source)
            elif not has_model(folder):
                await self.store.fetch(model, self.models_dir)
            if not has_model(folder):
                raise NotFound(
                    f"model {model!r} is neither in the worker's models directory nor in the "
                    "registry"
                )
            # a config claiming absurd sizes is refused before the engine allocates them
            await asyncio.to_thread(read_folder_config, folder / CONFIG)
            if self.host is not None and not self.host.can_serve(model):
                raise FailedPrecondition(
                    f"model {model!r} was unloaded from this worker's embedded Triton; "
                    "restart the worker to serve it again"
                )
            if self.host is not None:
                served = await asyncio.to_thread(
                    ServedModel,
                    model,
                    folder,
                    self.compute,
                    max_batch=self.options.max_batch,
                    max_context=self.options.max_context,
                )
                await asyncio.to_thread(self.host.serve, served)
            else:
                await self.client.load(model)
            if not await self.client.model_ready(model):
                raise FailedPrecondition(f"Triton did not make {model!r} ready")
            nc = self.ctx.nats
            handlers: list[tuple[str, Callable[[Msg], Awaitable[None]]]] = [
                (subjects.embed_work(model), self._on_embed),
                (subjects.classify_work(model), self._on_classify),
            ]
            self._subscriptions[model] = [
                await nc.subscribe(subject, queue=subjects.INFERENCE_QUEUE, cb=handler)
                for subject, handler in handlers
            ]
            await self._advertise()
            log.info("serving model", extra={"model": model})

    async def _fetch_deployed(self, folder: Path, tenant: str, model: str, number: int) -> None:
        """Make `folder` hold version `number` of `tenant`'s `model`, as that tenant sees
        the registry: a folder there already is used only if it was fetched from exactly
        that version (its origin note), never because it merely has the right name."""
        note = await asyncio.to_thread(fetched_from, folder)
        wanted = {"tenant": tenant, "model": model, "version": number}
        if has_model(folder) and {k: note.get(k) for k in wanted} == wanted:
            return
        store = ModelStore(self.ctx.links, tenant)
        version = await store.resolve(model, number)
        if version is None or version.tenant != tenant:
            raise NotFound(f"tenant {tenant!r} has no version {number} of model {model!r}")
        await store.fetch_version(version, folder)

    async def unload(self, model: str) -> None:
        """Stop serving `model`; its running generations end as cancelled."""
        async with self._lock:
            subscriptions = self._subscriptions.pop(model, None)
            if subscriptions is None:
                raise NotFound(f"model {model!r} is not loaded on this worker")
            for subscription in subscriptions:
                await subscription.unsubscribe()
            for request_id, (served_model, _) in list(self._inflight.items()):
                if served_model == model:
                    with contextlib.suppress(LLMOSError):
                        await self.client.cancel(model, request_id)
            try:  # never hold the worker's lock for ever on a Triton that does not answer
                await asyncio.wait_for(self.client.unload(model), UNLOAD_TIMEOUT_S)
            except TimeoutError:
                raise Unavailable(
                    f"Triton did not unload {model!r} within {UNLOAD_TIMEOUT_S:g}s; retry"
                ) from None
            if self.host is not None:
                await asyncio.to_thread(self.host.release, model)
            # only now: announced earlier, the model would still read as loadable here
            await self._advertise()

    async def close(self) -> None:
        """Take no new work, cancel what runs, and wait for it to end."""
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
        for own in (self._generate_subscription, self._cancel_subscription):
            if own is not None:
                with contextlib.suppress(Exception):
                    await own.unsubscribe()
        for request_id, (model, _) in list(self._inflight.items()):
            with contextlib.suppress(LLMOSError):
                await self.client.cancel(model, request_id)
        tasks = [task for _, task in self._inflight.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.ctx.settings.shutdown_grace_s)

    async def _advertise(self) -> None:
        """Tell the scheduler at once which models this worker serves now, rather than at
        the next heartbeat."""
        await report_status(self.ctx)

    # -- generation ---------------------------------------------------------------------

    async def _on_generate(self, msg: Msg) -> None:
        work = inference_pb2.GenerateWork.FromString(msg.data)
        ack = inference_pb2.GenerateChunk(
            request_id=work.request_id, seq=0, worker=self.ctx.instance.instance_id
        )
        refusal: LLMOSError | None = None
        if work.model not in self._subscriptions:
            refusal = NotFound(f"model {work.model!r} is not loaded on worker {ack.worker}")
        elif self.free_slots == 0:
            refusal = ResourceExhausted(f"worker {ack.worker} is at capacity")
        if refusal is not None:
            ack.done = True
            ack.error.CopyFrom(work_error(refusal))
            await msg.respond(ack.SerializeToString())
            return
        task = asyncio.create_task(self._generate(work))
        self._inflight[work.request_id] = (work.model, task)
        task.add_done_callback(lambda _: self._inflight.pop(work.request_id, None))
        await msg.respond(ack.SerializeToString())

    async def _generate(self, work: inference_pb2.GenerateWork) -> None:
        seq = 1
        tokens = 0

        async def send(chunk: inference_pb2.GenerateChunk) -> None:
            nonlocal seq, tokens
            chunk.request_id, chunk.seq, chunk.worker = (
                work.request_id,
                seq,
                self.ctx.instance.instance_id,
            )
            await self.ctx.nats.publish(work.reply_to, chunk.SerializeToString())
            if seq == 1:
                await self._progress(work.request_id, started=True)
            if chunk.done:
                tokens = chunk.usage.prompt_tokens + chunk.usage.completion_tokens
            seq += 1

        request = GenerateInput(
            prompt=work.prompt,
            messages=[{"role": m.role, "content": m.content} for m in work.chat.messages],
            params=sampling_params_to_dict(sampling_params_from_proto(work.params)),
        )
        try:
            async for chunk in self.client.generate(work.model, work.request_id, request):
                await send(chunk)
        except LLMOSError as exc:
            await send(inference_pb2.GenerateChunk(done=True, error=work_error(exc)))
        except Exception as exc:  # never leave a requester waiting
            log.exception("generation failed")
            await send(
                inference_pb2.GenerateChunk(
                    done=True, error=inference_pb2.WorkError(code="INTERNAL", message=str(exc))
                )
            )
        finally:
            await self._progress(work.request_id, finished=True, tokens=tokens)

    async def _progress(self, request_id: str, **fields: object) -> None:
        """Tell the scheduler a leased generation started streaming or ended."""
        progress = inference_pb2.WorkProgress(
            request_id=request_id,
            worker=self.ctx.instance.instance_id,
            **fields,  # type: ignore[arg-type]
        )
        with contextlib.suppress(Exception):
            await self.ctx.nats.publish(subjects.WORK_PROGRESS, progress.SerializeToString())

    async def _on_cancel(self, msg: Msg) -> None:
        request_id = msg.data.decode(errors="replace")
        entry = self._inflight.get(request_id)
        if entry is not None:
            with contextlib.suppress(LLMOSError):
                await self.client.cancel(entry[0], request_id)

    # -- embeddings and classification -----------------------------------------------------

    async def _on_embed(self, msg: Msg) -> None:
        work = inference_pb2.EmbedWork.FromString(msg.data)
        result = inference_pb2.EmbedResult()
        try:
            answers = await asyncio.gather(*(self.client.embed(work.model, t) for t in work.inputs))
            for values, tokens in answers:
                result.embeddings.add(values=values)
                result.prompt_tokens += tokens
        except LLMOSError as exc:
            result = inference_pb2.EmbedResult(error=work_error(exc))
        await msg.respond(result.SerializeToString())

    async def _on_classify(self, msg: Msg) -> None:
        work = inference_pb2.ClassifyWork.FromString(msg.data)
        labels = list(work.labels)
        try:
            answers = await asyncio.gather(
                *(self.client.score_label(work.model, work.text, labels, label) for label in labels)
            )
        except LLMOSError as exc:
            await msg.respond(
                inference_pb2.ClassifyResult(error=work_error(exc)).SerializeToString()
            )
            return
        scores = [score for score, _ in answers]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        ranked = sorted(zip(labels, scores, weights, strict=True), key=lambda r: -r[1])
        result = inference_pb2.ClassifyResult(
            scores=[
                inference_pb2.LabelScore(label=label, log_likelihood=score, probability=w / total)
                for label, score, w in ranked
            ],
            prompt_tokens=sum(tokens for _, tokens in answers),
        )
        await msg.respond(result.SerializeToString())
