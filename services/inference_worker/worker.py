"""The inference worker: a bridge between NATS and Triton.

Work arrives over NATS and goes to Triton unchanged (the serialized work message); the
answers go back the same way. Each served model has queue-group subscriptions for
embeddings and classification, so any worker that has the model may take a request;
generations are placed on a worker by the scheduler. A generation is acknowledged at
once (chunk 0) and then streamed on the requester's reply subject.

The worker writes each model's entry into the Triton model repository and asks Triton
to load it. When the worker runs Triton itself and Triton dies, the worker restarts it
and loads the models again: generations in flight end UNAVAILABLE with a sentence, and
work that arrives meanwhile waits for the new server and is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llmos import subjects, tracing
from llmos.errors import (
    FailedPrecondition,
    InvalidArgument,
    LLMOSError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from llmos.model.limits import read_folder_config
from llmos.model.names import CONFIG, MODEL_NAME
from llmos.model.tasks import ENTITIES, TaskSpec, servable, task_of
from llmos.modelstore import ModelStore, fetched_from
from llmos.runner import ServiceContext, report_status
from llmos.v1 import inference_pb2, scheduler_pb2
from llmos.work import work_error
from services.inference_worker.client import TritonLLMClient
from services.inference_worker.concurrent import Concurrent, Handler
from services.inference_worker.options import WorkerOptions
from services.inference_worker.repository import remove_entry, write_entry
from services.inference_worker.triton_server import TritonServer

log = logging.getLogger("llmos.worker")
T = TypeVar("T")

#: Triton unloads a decoupled model only once nothing is in flight on it
UNLOAD_TIMEOUT_S = 60.0
#: how long work waits for a Triton that is being restarted
RESTART_WAIT_S = 120.0
#: how often the worker checks that its own Triton still runs
TRITON_CHECK_S = 1.0
#: one-shot requests (embed, classify, entities, translate) a worker runs at once; more
#: wait in NATS (concurrent.py)
ONE_SHOT_INFLIGHT = 256


class InferenceWorker:
    """Serves the models it has loaded to whoever sends work over NATS."""

    def __init__(
        self,
        ctx: ServiceContext,
        options: WorkerOptions,
        client: TritonLLMClient,
        server: TritonServer | None,
        repository: Path,
    ) -> None:
        self.ctx = ctx
        self.options = options
        self.client = client
        self.server = server
        self.repository = repository
        self.models_dir = options.models_root(ctx.settings.data_dir)
        self.store = ModelStore(ctx.links)
        self._subscriptions: dict[str, list[Subscription]] = {}
        #: the loaded task models (entities, translation) and what each is
        self.tasks: dict[str, TaskSpec] = {}
        self._inflight: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._cancel_subscription: Subscription | None = None
        self._generate_subscription: Subscription | None = None
        self._lock = asyncio.Lock()
        self._one_shot = Concurrent(ONE_SHOT_INFLIGHT)
        #: completion tokens of every generation finished here (heartbeats carry it)
        self.generated_tokens = 0
        self._triton_up = asyncio.Event()
        self._triton_up.set()

    @property
    def models(self) -> list[str]:
        """Models served right now."""
        return list(self._subscriptions)

    def llms(self) -> list[str]:
        """The loaded models that generate (not task models)."""
        return [model for model in self._subscriptions if model not in self.tasks]

    def available_models(self) -> list[str]:
        """Models in the models directory this worker could load now."""
        if not self.models_dir.is_dir():
            return []
        return sorted(
            folder.name
            for folder in self.models_dir.iterdir()
            if MODEL_NAME.match(folder.name) and servable(folder)
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
            elif not servable(folder):
                await self.store.fetch(model, self.models_dir)
            if not servable(folder):
                await asyncio.to_thread(task_of, folder)  # a broken task file says what is wrong
                raise NotFound(
                    f"model {model!r} is neither in the worker's models directory nor in the "
                    "registry"
                )
            task = await asyncio.to_thread(task_of, folder)
            if task is None:
                # a config claiming absurd sizes is refused before the engine allocates them
                await asyncio.to_thread(read_folder_config, folder / CONFIG)
            await self._load_into_triton(model, task)
            nc = self.ctx.nats
            pb = inference_pb2
            client = self.client
            handlers: list[tuple[str, Handler]] = [
                (
                    subjects.embed_work(model),
                    self._answering(pb.EmbedWork, pb.EmbedResult, client.embed),
                ),
                (
                    subjects.classify_work(model),
                    self._answering(pb.ClassifyWork, pb.ClassifyResult, client.classify),
                ),
            ]
            if task is not None and task.kind == ENTITIES:
                handlers = [
                    (
                        subjects.entities_work(model),
                        self._answering(pb.EntitiesWork, pb.EntitiesResult, client.entities),
                    )
                ]
            elif task is not None:
                handlers = [
                    (
                        subjects.translate_work(model),
                        self._answering(pb.TranslateWork, pb.TranslateResult, client.translate),
                    )
                ]
            self._subscriptions[model] = [
                await nc.subscribe(
                    subject, queue=subjects.INFERENCE_QUEUE, cb=self._one_shot(handler)
                )
                for subject, handler in handlers
            ]
            if task is not None:  # served now: heartbeats may say so
                self.tasks[model] = task
            await self._advertise()
            log.info("serving model", extra={"model": model})

    async def _load_into_triton(self, model: str, task: TaskSpec | None) -> None:
        """Write the model's repository entry and have Triton load it."""
        await asyncio.to_thread(
            write_entry,
            self.repository,
            model,
            self.models_dir / model,
            self.options.entry_options(),
            task is not None,
        )
        await self.client.load(model)
        if not await self.client.model_ready(model):
            raise FailedPrecondition(f"Triton did not make {model!r} ready")

    async def supervise(self) -> None:
        """Restart this worker's own Triton whenever it dies, and load the models again
        (until they load: a new server may refuse connections for a moment)."""
        server = self.server
        assert server is not None, "only a worker running its own Triton supervises it"
        while True:
            await asyncio.sleep(TRITON_CHECK_S)
            if server.alive() and self._triton_up.is_set():
                continue
            self._triton_up.clear()
            try:
                if not server.alive():
                    log.error("Triton exited; restarting it", extra={"models": self.models})
                    await asyncio.to_thread(server.restart)
                async with self._lock:
                    for model in self.models:
                        await self._load_into_triton(model, self.tasks.get(model))
            except LLMOSError:
                log.exception("Triton could not be restarted; trying again")
                continue
            self._triton_up.set()
            log.info("Triton restarted", extra={"models": self.models})

    def triton_ready(self) -> bool:
        """Whether this worker's Triton serves its models now (not being restarted)."""
        return self._triton_up.is_set()

    async def triton_problem(self) -> str:
        """ "" while this worker's Triton serves, else why not (its health says so)."""
        if self.server is not None:
            up = self._triton_up.is_set() and self.server.alive()
            return "" if up else "Triton exited; restarting it"
        return "" if await self.client.live() else "Triton does not answer"

    def _restarts(self) -> int:
        return self.server.restarts if self.server is not None else 0

    def _lost_triton_since(self, restarts: int) -> bool:
        """Whether this worker's own Triton died or was restarted since `restarts` was
        read: a call that failed then failed for that, not for itself, and may be tried
        again once the supervisor has the new server serving."""
        if self.server is None:
            return False
        if not self.server.alive():
            self._triton_up.clear()  # the supervisor sets it again once restarted
            return True
        return self.server.restarts != restarts

    async def _triton(self) -> None:
        """Wait while Triton is being restarted (work waits rather than fails)."""
        if not self._triton_up.is_set():
            try:
                await asyncio.wait_for(self._triton_up.wait(), RESTART_WAIT_S)
            except TimeoutError:
                raise Unavailable(
                    f"the inference server did not come back within {RESTART_WAIT_S:g}s"
                ) from None

    async def _fetch_deployed(self, folder: Path, tenant: str, model: str, number: int) -> None:
        """Make `folder` hold version `number` of `tenant`'s `model`, as that tenant sees
        the registry: a folder there already is used only if it was fetched from exactly
        that version (its origin note), never because it merely has the right name."""
        note = await asyncio.to_thread(fetched_from, folder)
        wanted = {"tenant": tenant, "model": model, "version": number}
        if servable(folder) and {k: note.get(k) for k in wanted} == wanted:
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
            self.tasks.pop(model, None)
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
            await asyncio.to_thread(remove_entry, self.repository, model)
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
        await self._one_shot.close(self.ctx.settings.shutdown_grace_s)

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
        elif spec := self.tasks.get(work.model):
            refusal = InvalidArgument(
                "model", f"{work.model!r} is a {spec.kind} model; it does not generate text"
            )
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
        attributes = {tracing.WORK_ID: work.request_id, "llmos.model": work.model}
        with tracing.start("worker generate", work.traceparent, attributes=attributes) as span:
            await self._run_generation(work, span)

    async def _run_generation(self, work: inference_pb2.GenerateWork, span: tracing.Span) -> None:
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
                self.generated_tokens += chunk.usage.completion_tokens
            seq += 1

        try:
            for attempt in (1, 2):
                restarts = self._restarts()
                try:
                    await self._triton()
                    parent = tracing.traceparent(span)
                    with tracing.start("triton infer", parent, tracing.SpanKind.CLIENT) as infer:
                        work.traceparent = tracing.traceparent(infer) or parent
                        async for chunk in self.client.generate(work.model, work):
                            await send(chunk)
                    break
                except Unavailable:
                    # nothing reached the requester yet: wait for the new Triton, once
                    if attempt == 1 and seq == 1 and self._lost_triton_since(restarts):
                        log.info(
                            "retrying on the restarted Triton", extra={"request": work.request_id}
                        )
                        continue
                    raise
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

    async def _answer(self, call: Callable[[], Awaitable[T]]) -> T:
        """A one-shot Triton call, tried again once if this worker's Triton died meanwhile."""
        restarts = self._restarts()
        try:
            await self._triton()
            return await call()
        except Unavailable:
            if not self._lost_triton_since(restarts):
                raise
        await self._triton()
        return await call()

    def _answering(
        self,
        work_type: type[Message],
        result_type: type[Message],
        call: Callable[[str, Any], Awaitable[Message]],
    ) -> Handler:
        """The handler of one kind of one-shot work (embed, classify, entities, translate):
        the work to Triton, its result, or the refusal as a result carrying a WorkError."""

        async def handle(msg: Msg) -> None:
            work: Any = work_type.FromString(msg.data)
            try:
                result = await self._answer(lambda: call(work.model, work))
            except LLMOSError as exc:
                result = result_type(error=work_error(exc))
            await msg.respond(result.SerializeToString())

        return handle

    def task_models(self) -> list[scheduler_pb2.TaskModel]:
        """The loaded task models, as heartbeats tell the gateways."""
        return [
            scheduler_pb2.TaskModel(name=name, kind=spec.kind, pairs=spec.pair_names())
            for name, spec in self.tasks.items()
        ]
