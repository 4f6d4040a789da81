"""Inference routing: which models are served, and handing work to a worker over NATS.

Any worker serving the model may take a request (NATS queue group); the scheduler issue
replaces this with placement. A generation is acknowledged by the worker that took it,
then streamed to a private inbox; if the caller goes away, the worker is told to cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import TypeVar

from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from llmos import subjects
from llmos.errors import NotFound, Unavailable
from llmos.model.names import DEFAULT_MODEL
from llmos.registry import ServiceRegistry
from llmos.runner import ServiceContext
from llmos.v1 import inference_pb2
from llmos.work import domain_error

ACCEPT_TIMEOUT_S = 5.0
#: the longest a stream may go quiet before the worker is presumed lost
STALL_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 120.0

R = TypeVar("R", inference_pb2.EmbedResult, inference_pb2.ClassifyResult)


class ModelCatalog:
    """Models some live worker serves, from the service registry."""

    def __init__(self, registry: ServiceRegistry) -> None:
        self._registry = registry

    async def served(self) -> Counter[str]:
        """Model name -> number of worker instances serving it."""
        counts: Counter[str] = Counter()
        for instance in await self._registry.live_instances():
            counts.update(instance.models)
        return counts

    async def resolve(self, requested: str) -> str:
        """The model to use: the one named, or the default; NOT_FOUND if nobody serves it."""
        served = await self.served()
        name = requested or DEFAULT_MODEL
        if name not in served:
            available = ", ".join(sorted(served)) or "none"
            raise NotFound(f"model {name!r} is not served (served models: {available})")
        return name


class InferenceRouter:
    """Sends inference work to workers and brings the answers back."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._nats = ctx.nats

    async def _request(self, subject: str, payload: bytes, what: str, timeout_s: float) -> Msg:
        try:
            return await self._nats.request(subject, payload, timeout=timeout_s)
        except NoRespondersError:
            raise Unavailable(f"no worker is taking {what} requests right now") from None
        except (TimeoutError, NatsTimeout):
            raise Unavailable(f"no worker answered the {what} request in time") from None

    async def generate(
        self, work: inference_pb2.GenerateWork
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        """Stream a generation's chunks; closing the iterator early cancels the work."""
        chunks: asyncio.Queue[inference_pb2.GenerateChunk] = asyncio.Queue()

        async def on_chunk(msg: Msg) -> None:
            await chunks.put(inference_pb2.GenerateChunk.FromString(msg.data))

        work.reply_to = f"_INBOX.{uuid.uuid4().hex}"
        subscription = await self._nats.subscribe(work.reply_to, cb=on_chunk)
        finished = False
        try:
            reply = await self._request(
                subjects.generate_work(work.model),
                work.SerializeToString(),
                "generation",
                ACCEPT_TIMEOUT_S,
            )
            accepted = inference_pb2.GenerateChunk.FromString(reply.data)
            if accepted.HasField("error"):
                finished = True
                raise domain_error(accepted.error)
            while not finished:
                try:
                    chunk = await asyncio.wait_for(chunks.get(), timeout=STALL_TIMEOUT_S)
                except TimeoutError:
                    raise Unavailable(
                        f"worker {accepted.worker} stopped responding; retry the request"
                    ) from None
                finished = chunk.done
                if chunk.HasField("error"):
                    raise domain_error(chunk.error)
                yield chunk
        finally:
            await subscription.unsubscribe()
            if not finished:
                with contextlib.suppress(Exception):
                    await self._nats.publish(subjects.CANCEL_WORK, work.request_id.encode())

    async def _call(self, subject: str, work: Message, result: type[R], what: str) -> R:
        """One request/reply exchange whose answer may carry a WorkError."""
        reply = await self._request(subject, work.SerializeToString(), what, CALL_TIMEOUT_S)
        answer = result.FromString(reply.data)
        if answer.HasField("error"):
            raise domain_error(answer.error)
        return answer

    async def embed(self, work: inference_pb2.EmbedWork) -> inference_pb2.EmbedResult:
        """Embeddings of every input."""
        subject = subjects.embed_work(work.model)
        return await self._call(subject, work, inference_pb2.EmbedResult, "embedding")

    async def classify(self, work: inference_pb2.ClassifyWork) -> inference_pb2.ClassifyResult:
        """The labels ranked by log-likelihood."""
        subject = subjects.classify_work(work.model)
        return await self._call(subject, work, inference_pb2.ClassifyResult, "classification")
