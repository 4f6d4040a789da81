"""The worker's only way to reach Triton: `tritonclient.grpc.aio` (KServe v2 protocol).

Every served LLM is one decoupled Triton model (repository.py), so every call to it is
a streaming call: a generation streams its chunks, the other tasks answer once. Task
models (entities, translation) are ordinary batched models: one `infer` call each. Whether
Triton is the worker's own process or an NGC container elsewhere (LLMOS_TRITON_URL)
makes no difference here.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

from llmos.errors import LLMOSError, Unavailable
from llmos.v1 import inference_pb2
from services.inference_worker.repository import CANCEL, CLASSIFY, EMBED, GENERATE, STATS
from services.inference_worker.triton_server import ACCESS_TOKEN_HEADER
from services.inference_worker.wire import triton_error

#: how long Triton may take to end a call's stream after its last answer
STREAM_END_S = 5.0


def _bytes_input(name: str, value: bytes) -> InferInput:
    tensor = InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value], dtype=np.object_))
    return tensor


def _domain_error(exc: InferenceServerException) -> LLMOSError:
    return triton_error(exc.message() or str(exc))


async def _drain(stream: Any) -> None:
    """Read a stream to its end."""
    async for _ in stream:
        pass


class TritonLLMClient:
    """Generation, cancellation, embeddings and classification against a Triton server."""

    def __init__(self, url: str, access_token: str = "") -> None:
        self.url = url
        self._client = triton_aio.InferenceServerClient(url)
        # a restricted Triton answers only to holders of its token (triton_server.py)
        self._headers = {ACCESS_TOKEN_HEADER: access_token} if access_token else None

    async def close(self) -> None:
        """Close the gRPC channel."""
        await self._client.close()

    async def live(self) -> bool:
        """Whether the server answers."""
        try:
            return bool(await self._client.is_server_live())
        except (InferenceServerException, grpc.RpcError):
            return False

    async def model_ready(self, model: str) -> bool:
        """Whether the model is loaded and ready."""
        try:
            return bool(await self._client.is_model_ready(model))
        except (InferenceServerException, grpc.RpcError):
            return False

    async def _call(
        self, model: str, task: str, payload: bytes, key: str
    ) -> AsyncGenerator[bytes, bool]:
        """The answers of one request, until the caller stops reading or the model's last.

        The caller breaks out after the answer it knows is the last; Triton then ends the
        stream itself, once the model has sent its final flag. Cancelling first raced
        with that flag and could leave the request in flight in Triton for good, and
        unloading the model then waited for it for ever.
        """
        inputs = [_bytes_input("task", task.encode()), _bytes_input("request", payload)]

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": model, "inputs": inputs, "request_id": key}

        stream = self._client.stream_infer(one_request(), headers=self._headers)
        ended = False
        try:
            async for result, error in stream:
                if error is not None:
                    raise _domain_error(error)
                answer = result.as_numpy("response")[0]
                ended = bool((yield bytes(answer)))
                if ended:
                    break
        except InferenceServerException as exc:
            raise _domain_error(exc) from None
        except grpc.RpcError:
            raise Unavailable("the inference server could not be reached; retry") from None
        finally:
            if not ended:  # an error, or the caller went away: stop it now
                stream.cancel()
        try:
            await asyncio.wait_for(_drain(stream), STREAM_END_S)
        except (TimeoutError, InferenceServerException, grpc.RpcError):
            stream.cancel()

    async def _answer(self, model: str, task: str, payload: bytes, key: str) -> bytes:
        """The one answer of a one-shot task."""
        calls = self._call(model, task, payload, key)
        try:
            answer = await anext(calls)
        except StopAsyncIteration:
            raise Unavailable("the inference server closed the call without an answer") from None
        with contextlib.suppress(StopAsyncIteration):
            await calls.asend(True)
        return answer

    async def generate(
        self, model: str, work: inference_pb2.GenerateWork
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        """Stream a generation; closing the iterator early abandons it (cancel() stops it)."""
        calls = self._call(model, GENERATE, work.SerializeToString(), work.request_id)
        done = False
        try:
            answer = await anext(calls, None)
            while answer is not None:
                chunk = inference_pb2.GenerateChunk.FromString(answer)
                done = chunk.done
                yield chunk
                if done:
                    with contextlib.suppress(StopAsyncIteration):
                        await calls.asend(True)
                    return
                answer = await anext(calls, None)
        finally:
            if not done:
                await calls.aclose()
        raise Unavailable("the inference server ended the stream before the answer's end; retry")

    async def cancel(self, model: str, key: str) -> bool:
        """Stop a running generation; False if it was not running."""
        return await self._answer(model, CANCEL, key.encode(), f"cancel-{key}") == b"1"

    async def stats(self, model: str) -> inference_pb2.EngineLoad:
        """How full `model`'s engine is now."""
        key = f"stats-{uuid.uuid4().hex}"
        return inference_pb2.EngineLoad.FromString(await self._answer(model, STATS, b"", key))

    async def embed(self, model: str, work: inference_pb2.EmbedWork) -> inference_pb2.EmbedResult:
        """Embeddings of the work's texts (the engine batches concurrent calls)."""
        answer = await self._answer(model, EMBED, work.SerializeToString(), work.request_id)
        return inference_pb2.EmbedResult.FromString(answer)

    async def classify(
        self, model: str, work: inference_pb2.ClassifyWork
    ) -> inference_pb2.ClassifyResult:
        """Every label of the work ranked by its likelihood as a continuation of the text."""
        answer = await self._answer(model, CLASSIFY, work.SerializeToString(), work.request_id)
        return inference_pb2.ClassifyResult.FromString(answer)

    async def infer(self, model: str, payload: bytes, key: str) -> bytes:
        """One request to a task model (not decoupled: Triton batches it with others)."""
        tensor = InferInput("request", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[payload]], dtype=np.object_))
        try:
            result = await self._client.infer(
                model, [tensor], request_id=key, headers=self._headers
            )
        except InferenceServerException as exc:
            raise _domain_error(exc) from None
        except grpc.RpcError:
            raise Unavailable("the inference server could not be reached; retry") from None
        return bytes(result.as_numpy("response").reshape(-1)[0])

    async def batch_counts(self, model: str) -> tuple[int, int]:
        """Requests a batched model answered and the batches it ran them in, since it
        loaded (Triton's own statistics): their ratio is the mean batch size."""
        try:
            stats = await self._client.get_inference_statistics(model, headers=self._headers)
        except InferenceServerException as exc:
            raise _domain_error(exc) from None
        except grpc.RpcError:
            raise Unavailable("the inference server could not be reached; retry") from None
        entry = stats.model_stats[0]
        return int(entry.inference_count), int(entry.execution_count)

    async def entities(
        self, model: str, work: inference_pb2.EntitiesWork
    ) -> inference_pb2.EntitiesResult:
        """The named entities of the work's texts."""
        answer = await self.infer(model, work.SerializeToString(), work.request_id)
        return inference_pb2.EntitiesResult.FromString(answer)

    async def translate(
        self, model: str, work: inference_pb2.TranslateWork
    ) -> inference_pb2.TranslateResult:
        """The work's texts translated."""
        answer = await self.infer(model, work.SerializeToString(), work.request_id)
        return inference_pb2.TranslateResult.FromString(answer)

    async def load(self, model: str) -> None:
        """Ask Triton (explicit model control) to load the model's repository entry."""
        try:
            await self._client.load_model(model, headers=self._headers)
        except InferenceServerException as exc:
            raise Unavailable(f"loading {model}: {exc.message()}") from None

    async def unload(self, model: str) -> None:
        """Unload the model (Triton waits for its requests in flight)."""
        try:
            await self._client.unload_model(model, headers=self._headers)
        except InferenceServerException as exc:
            raise Unavailable(f"unloading {model}: {exc.message()}") from None
