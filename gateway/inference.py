"""Inference routing: which models are served, and handing work out over NATS.

Generations go to the scheduler, which queues them (priorities, fair share) and places
each on a worker; the worker streams the answer to a private inbox here. If the caller
goes away, the scheduler drops it from the queue or the worker cancels it. Embeddings,
classifications, entities and translations are short: any worker serving the model takes
them (queue group).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TypeVar

from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from llmos import subjects
from llmos.errors import NotFound, Unavailable
from llmos.log import request_id_var
from llmos.runner import ServiceContext
from llmos.v1 import inference_pb2
from llmos.work import domain_error

ACCEPT_TIMEOUT_S = 5.0
#: the longest a stream may go quiet before the worker is presumed lost
STALL_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 120.0
#: while queued, how often to check that the scheduler holding the work is alive
HOLDER_CHECK_S = 1.0
#: how long accepted work waits for a scheduler to come back before the call fails
RESUBMIT_FOR_S = 30.0

log = logging.getLogger("llmos.gateway.inference")


def work_id() -> str:
    """A unique id for work handed to the scheduler and workers. It starts with the call's
    request id (for correlation in logs) but never is it: callers choose request ids, and
    one caller must not be able to collide with, or cancel, another's work."""
    return f"{request_id_var.get()}-{uuid.uuid4().hex[:12]}"


R = TypeVar(
    "R",
    inference_pb2.EmbedResult,
    inference_pb2.ClassifyResult,
    inference_pb2.EntitiesResult,
    inference_pb2.TranslateResult,
)


class InferenceRouter:
    """Sends inference work to workers and brings the answers back."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._nats = ctx.nats
        self._registry = ctx.registry

    async def _request(
        self, subject: str, payload: bytes, what: str, timeout_s: float, model: str = ""
    ) -> Msg:
        try:
            return await self._nats.request(subject, payload, timeout=timeout_s)
        except NoRespondersError:
            if model:  # the workers' subscriptions are what serves a model: none has it
                raise NotFound(f"model {model!r} is not served by any worker") from None
            raise Unavailable(f"no scheduler is taking {what} requests right now") from None
        except (TimeoutError, NatsTimeout):
            raise Unavailable(f"no worker answered the {what} request in time") from None

    async def generate(
        self,
        work: inference_pb2.GenerateWork,
        priority: int = 0,
        cost: int = 1,
        deadline_s: float | None = None,
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        """Stream a generation's chunks; closing the iterator early cancels the work.

        The scheduler queues the work and places it on a worker, which streams here. If
        the scheduler holding it dies before any chunk arrives, the work is handed to
        the next one (a resubmission of queued work is harmless: ids are unique)."""
        chunks: asyncio.Queue[inference_pb2.GenerateChunk] = asyncio.Queue()

        async def on_chunk(msg: Msg) -> None:
            await chunks.put(inference_pb2.GenerateChunk.FromString(msg.data))

        work.reply_to = self._nats.new_inbox()  # the gateway's private prefix: only it may read
        scheduled = inference_pb2.ScheduledGenerate(work=work, cost=cost)
        scheduled.priority = priority  # type: ignore[assignment]
        subscription = await self._nats.subscribe(work.reply_to, cb=on_chunk)
        finished = False
        try:
            holder = await self._schedule(scheduled)
            worker = ""
            while not finished:
                chunk = await self._next_chunk(chunks, scheduled, holder, first=not worker)
                if isinstance(chunk, str):  # resubmitted to another scheduler
                    holder = chunk
                    continue
                if worker and chunk.worker and chunk.worker != worker:
                    continue  # a duplicate run after a scheduler failover: ignore it
                worker = worker or chunk.worker or "?"
                finished = chunk.done
                if chunk.HasField("error"):
                    raise domain_error(chunk.error)
                yield chunk
        finally:
            await subscription.unsubscribe()
            if not finished:
                with contextlib.suppress(Exception):
                    await self._nats.publish(subjects.CANCEL_WORK, work.request_id.encode())

    async def _schedule(self, scheduled: inference_pb2.ScheduledGenerate) -> str:
        """Queue the work with a scheduler; the instance id of the one that holds it."""
        reply_msg = await self._request(
            subjects.SCHEDULE_GENERATE, scheduled.SerializeToString(), "scheduling",
            ACCEPT_TIMEOUT_S,
        )  # fmt: skip
        reply = inference_pb2.ScheduleReply.FromString(reply_msg.data)
        if reply.HasField("error"):
            raise domain_error(reply.error)
        return reply.scheduler

    async def _next_chunk(
        self,
        chunks: asyncio.Queue[inference_pb2.GenerateChunk],
        scheduled: inference_pb2.ScheduledGenerate,
        holder: str,
        first: bool,
    ) -> inference_pb2.GenerateChunk | str:
        """The next chunk. Before the first one the work may wait in the queue as long as
        the caller's deadline allows, but the scheduler holding it must stay alive."""
        if not first:
            try:
                return await asyncio.wait_for(chunks.get(), timeout=STALL_TIMEOUT_S)
            except TimeoutError:
                raise Unavailable("the worker stopped responding; retry the request") from None
        orphaned_at: float | None = None
        while True:
            try:
                return await asyncio.wait_for(chunks.get(), timeout=HOLDER_CHECK_S)
            except TimeoutError:
                live = {i.instance_id for i in await self._registry.live_instances()}
                if holder not in live:
                    log.warning("scheduler %s is gone; handing the work to another", holder)
                    orphaned_at = orphaned_at or time.monotonic()
                    try:
                        return await self._schedule(scheduled)
                    except Unavailable:  # none is up yet: a restart takes seconds
                        if time.monotonic() - orphaned_at > RESUBMIT_FOR_S:
                            raise

    async def _call(self, subject: str, work: Message, result: type[R], what: str, model: str) -> R:
        """One request/reply exchange with a worker serving `model`, whose answer may
        carry a WorkError."""
        reply = await self._request(subject, work.SerializeToString(), what, CALL_TIMEOUT_S, model)
        answer = result.FromString(reply.data)
        if answer.HasField("error"):
            raise domain_error(answer.error)
        return answer

    async def embed(self, work: inference_pb2.EmbedWork) -> inference_pb2.EmbedResult:
        """Embeddings of every input."""
        subject = subjects.embed_work(work.model)
        return await self._call(subject, work, inference_pb2.EmbedResult, "embedding", work.model)

    async def classify(self, work: inference_pb2.ClassifyWork) -> inference_pb2.ClassifyResult:
        """The labels ranked by log-likelihood."""
        subject = subjects.classify_work(work.model)
        return await self._call(
            subject, work, inference_pb2.ClassifyResult, "classification", work.model
        )

    async def entities(self, work: inference_pb2.EntitiesWork) -> inference_pb2.EntitiesResult:
        """The named entities of every text, from an entity model."""
        subject = subjects.entities_work(work.model)
        return await self._call(subject, work, inference_pb2.EntitiesResult, "entities", work.model)

    async def translate(self, work: inference_pb2.TranslateWork) -> inference_pb2.TranslateResult:
        """Every text translated by a translation model."""
        subject = subjects.translate_work(work.model)
        return await self._call(
            subject, work, inference_pb2.TranslateResult, "translation", work.model
        )
