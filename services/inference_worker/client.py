"""The worker's only way to reach Triton: `tritonclient.grpc.aio` (KServe v2 protocol).

Pointing LLMOS_TRITON_URL at an external Triton needs no code change, because nothing
here knows whether Triton is embedded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from llmos.errors import InvalidArgument, LLMOSError, Unavailable
from llmos.v1 import inference_pb2
from services.inference_worker.triton_models import (
    CANCEL,
    CLASSIFY,
    EMBED,
    GENERATE,
    KINDS,
    triton_name,
)
from services.inference_worker.wire import triton_error

ACCESS_TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"
#: how long Triton may take to end a generation's stream after its last chunk
STREAM_END_S = 5.0


@dataclass
class GenerateInput:
    """What to generate from: a raw prompt or chat messages, and sampling parameters."""

    prompt: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


def _bytes_input(name: str, value: str) -> InferInput:
    tensor = InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value.encode("utf-8")], dtype=object))
    return tensor


def _batched_bytes_input(name: str, value: str) -> InferInput:
    tensor = InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[value.encode("utf-8")]], dtype=object))
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
        # model control (load/unload) may be restricted to holders of a token
        self._control_headers = {ACCESS_TOKEN_HEADER: access_token} if access_token else None

    async def close(self) -> None:
        """Close the gRPC channel."""
        await self._client.close()

    async def model_ready(self, model: str) -> bool:
        """Whether every Triton model of `model` is loaded and ready."""
        try:
            return all(
                [
                    await self._client.is_model_ready(triton_name(model, kind))
                    for kind in (GENERATE, EMBED)
                ]
            )
        except InferenceServerException:
            return False

    async def generate(
        self, model: str, key: str, request: GenerateInput
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        """Stream a generation; closing the iterator early abandons it (cancel() stops it)."""
        inputs = [
            _bytes_input("request_key", key),
            _bytes_input("params_json", json.dumps(request.params)),
        ]
        if request.messages:
            inputs.append(_bytes_input("messages_json", json.dumps(request.messages)))
        else:
            inputs.append(_bytes_input("prompt", request.prompt))

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": triton_name(model, GENERATE), "inputs": inputs, "request_id": key}

        stream = self._client.stream_infer(one_request())
        ended = False
        try:
            async for result, error in stream:
                if error is not None:
                    raise _domain_error(error)
                chunk = inference_pb2.GenerateChunk.FromString(result.as_numpy("chunk")[0])
                yield chunk
                if chunk.done:
                    ended = True
                    break
        except InferenceServerException as exc:
            raise _domain_error(exc) from None
        finally:
            if not ended:  # an error, or the caller went away: stop it now
                stream.cancel()
        if not ended:
            raise Unavailable("the inference server closed the stream before the end")
        # Let Triton end the stream itself, once the model has sent its final flag.
        # Cancelling first raced with that flag and could leave the request in flight in
        # Triton for good, and unloading the model then waited for it for ever.
        try:
            await asyncio.wait_for(_drain(stream), STREAM_END_S)
        except (TimeoutError, InferenceServerException, grpc.RpcError):
            stream.cancel()

    async def cancel(self, model: str, key: str) -> bool:
        """Stop a running generation; False if it was not running."""
        try:
            result = await self._client.infer(
                triton_name(model, CANCEL),
                [_bytes_input("request_key", key)],
                outputs=[InferRequestedOutput("cancelled")],
            )
        except InferenceServerException as exc:
            raise _domain_error(exc) from None
        return bool(result.as_numpy("cancelled")[0])

    async def embed(self, model: str, text: str) -> tuple[list[float], int]:
        """Embedding of one text (Triton batches concurrent calls) and its token count."""
        try:
            result = await self._client.infer(
                triton_name(model, EMBED), [_batched_bytes_input("text", text)]
            )
        except InferenceServerException as exc:
            error = _domain_error(exc)
            if isinstance(error, InvalidArgument):
                raise InvalidArgument("inputs", error.reason) from None
            raise error from None
        return [float(v) for v in result.as_numpy("embedding")[0]], int(
            result.as_numpy("tokens")[0][0]
        )

    async def score_label(
        self, model: str, text: str, labels: Sequence[str], label: str
    ) -> tuple[float, int]:
        """log P(label | text, labels) and the tokens it took: one pair, batched with
        concurrent calls by Triton."""
        inputs = [
            _batched_bytes_input("text", text),
            _batched_bytes_input("labels_json", json.dumps(list(labels))),
            _batched_bytes_input("label", label),
        ]
        try:
            result = await self._client.infer(triton_name(model, CLASSIFY), inputs)
        except InferenceServerException as exc:
            raise _domain_error(exc) from None
        return float(result.as_numpy("log_likelihood")[0][0]), int(result.as_numpy("tokens")[0][0])

    async def _control(self, action: str, call: Callable[..., Awaitable[Any]], model: str) -> None:
        """Apply a model-control call to each of a model's Triton models."""
        for kind in KINDS:
            try:
                await call(triton_name(model, kind), headers=self._control_headers)
            except InferenceServerException as exc:
                raise Unavailable(f"{action} {model}: {exc.message()}") from None

    async def load(self, model: str) -> None:
        """Ask an external Triton (explicit model control) to load a model's Triton models."""
        await self._control("loading", self._client.load_model, model)

    async def unload(self, model: str) -> None:
        """Unload a model's Triton models."""
        await self._control("unloading", self._client.unload_model, model)
