"""The Triton models of one LLM: what runs inside Triton Inference Server.

For a model version NAME four Triton models are bound:
- NAME__generate  decoupled (streaming): prompt or chat in, token deltas out;
- NAME__cancel    stops a running generation by its request key;
- NAME__embed     dynamic batching: mean-pooled, L2-normalised final hidden states;
- NAME__classify  dynamic batching: log-likelihood of a label given a text.
The same definitions serve an external Triton through PyTriton's model store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.proxy.types import Request

from llmos.errors import InvalidArgument, LLMOSError
from llmos.generation import SamplingParams
from llmos.model.folder import load_model
from llmos.model.names import CHAT_ROLES as ROLES
from llmos.model.text import TextCodec
from llmos.v1 import inference_pb2
from services.inference_worker.engine.compute import ComputeLoop
from services.inference_worker.engine.engine import Engine, RequestHandle, TokenEvent
from services.inference_worker.engine.scoring import (
    check_classification_tokens,
    classification_prompt,
    label_log_likelihoods,
)
from services.inference_worker.wire import encode_error

Array = NDArray[Any]

GENERATE, CANCEL, EMBED, CLASSIFY = "generate", "cancel", "embed", "classify"
KINDS = (GENERATE, CANCEL, EMBED, CLASSIFY)
MAX_EMBED_TOKENS = 512


def triton_name(model: str, kind: str) -> str:
    """Name of one of a model's Triton models."""
    return f"{model}__{kind}"


class ModelError(Exception):
    """Raised inside Triton so the client receives a coded message (see wire.py)."""


def _text(request: Request, name: str) -> str:
    """A BYTES input as text ('' when an optional input is absent)."""
    if name not in request.data:
        return ""
    value = request[name].reshape(-1)
    return value[0].decode("utf-8") if len(value) else ""


class ServedModel:
    """An engine and its auxiliary heads for one model folder; torch runs on `compute`."""

    def __init__(
        self, name: str, folder: Path, compute: ComputeLoop, *, max_batch: int, max_context: int
    ) -> None:
        self.name = name
        self.compute = compute
        self.model = compute.call(lambda: load_model(folder)).result()
        self.codec = TextCodec(folder)
        self.engine = Engine(
            self.model,
            self.codec,
            max_batch=max_batch,
            max_context=max_context,
            wake=compute.wake,
        )
        self._running: dict[str, RequestHandle] = {}
        compute.attach(self.engine)

    def stop(self) -> None:
        """Cancel everything in flight, let the engine retire it, stop stepping it."""
        self.engine.shutdown()
        while self.engine.has_work():  # each pass of the compute loop retires what it can
            self.compute.call(lambda: None).result()
        self.compute.detach(self.engine)

    # -- generate ------------------------------------------------------------------------

    def _prompt_ids(self, request: Request) -> list[int]:
        messages_json = _text(request, "messages_json")
        if not messages_json:
            prompt = _text(request, "prompt")
            if not prompt:
                raise InvalidArgument("prompt", "must not be empty")
            return self.codec.encode(prompt)
        messages = json.loads(messages_json)
        for index, message in enumerate(messages):
            if message.get("role") not in ROLES:
                raise InvalidArgument(
                    f"messages[{index}].role", f"must be one of {', '.join(ROLES)}"
                )
        return self.codec.encode(self.codec.render_chat(messages))

    async def generate(self, requests: list[Request]) -> AsyncIterator[list[dict[str, Array]]]:
        """Stream one generation; several events ready at once go out as one response."""
        (request,) = requests
        key = _text(request, "request_key")
        params = json.loads(_text(request, "params_json") or "{}")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        try:

            def deliver(event: TokenEvent) -> None:  # runs on the compute thread
                loop.call_soon_threadsafe(queue.put_nowait, event)

            handle = self.engine.submit(
                self._prompt_ids(request),
                SamplingParams(**{**params, "stop": tuple(params.get("stop", ()))}),
                deliver,
            )
        except LLMOSError as exc:
            raise ModelError(encode_error(exc)) from None
        self._running[key] = handle
        finished = False
        try:
            while not finished:
                events = [await queue.get()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                finished = events[-1].finish_reason is not None
                yield [_generate_response(events)]
        finally:
            self._running.pop(key, None)
            if not finished:
                handle.cancel()

    def cancel(self, requests: list[Request]) -> list[dict[str, Array]]:
        """Cancel generations by key; unknown keys (already finished) are fine."""
        answers = []
        for request in requests:
            handle = self._running.get(_text(request, "request_key"))
            if handle is not None:
                handle.cancel()
            answers.append({"cancelled": np.array([handle is not None])})
        return answers

    # -- embed and classify ----------------------------------------------------------------

    def _hidden(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [B, T, H] and the valid-token mask of right-padded sequences.

        Call on the compute thread. Right padding with causal attention means real tokens
        never attend to the padding, so no padding mask is needed.
        """
        width = max(len(s) for s in sequences)
        ids = torch.zeros(len(sequences), width, dtype=torch.long)
        valid = torch.zeros(len(sequences), width, dtype=torch.bool)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            valid[row, : len(sequence)] = True
        return self.model.hidden_states(ids, torch.arange(width).expand_as(ids)), valid

    def _embed(self, sequences: list[list[int]]) -> tuple[Array, Array]:
        hidden, valid = self._hidden(sequences)
        mask = valid.unsqueeze(-1).float()
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        return pooled.numpy().astype(np.float32), valid.sum(1, keepdim=True).numpy()

    @batch
    def embed(self, text: Array) -> dict[str, Array]:
        """Mean-pooled final hidden states, L2-normalised, for a batch of texts."""
        sequences = []
        for index, item in enumerate(text.reshape(-1)):
            ids = self.codec.encode(item.decode("utf-8"))[:MAX_EMBED_TOKENS]
            if not ids:
                raise ModelError(encode_error(InvalidArgument(f"inputs[{index}]", "is empty")))
            sequences.append(ids)
        embedding, tokens = self.compute.call(lambda: self._embed(sequences)).result()
        return {"embedding": embedding, "tokens": tokens.astype(np.int64)}

    @batch
    def classify(self, text: Array, labels_json: Array, label: Array) -> dict[str, Array]:
        """log P(label | text, all labels) for each (text, label) pair of the batch, and the
        tokens each pair ran through the model (what the caller is charged)."""
        prompts = [
            classification_prompt(self.codec, t.decode("utf-8"), json.loads(ls.decode("utf-8")))
            for t, ls in zip(text.reshape(-1), labels_json.reshape(-1), strict=True)
        ]
        labels = [self.codec.encode(item.decode("utf-8")) for item in label.reshape(-1)]
        try:
            for prompt, label_ids in zip(prompts, labels, strict=True):
                check_classification_tokens(prompt, label_ids, self.engine.max_context)
        except InvalidArgument as exc:
            raise ModelError(encode_error(exc)) from None
        scores = self.compute.call(
            lambda: label_log_likelihoods(self.model, prompts, labels)
        ).result()
        tokens = [len(prompt) + len(ids) for prompt, ids in zip(prompts, labels, strict=True)]
        return {
            "log_likelihood": np.array(scores, dtype=np.float64).reshape(-1, 1),
            "tokens": np.array(tokens, dtype=np.int64).reshape(-1, 1),
        }


def _generate_response(events: list[TokenEvent]) -> dict[str, Array]:
    """One streamed response: a serialized GenerateChunk in a single BYTES tensor.

    One tensor instead of five (text, ids, reason, usage, timings) cuts the per-token
    serialization work in PyTriton's proxy and in the client, which share the CPU with
    the engine; the worker forwards the chunk nearly as is.
    """
    chunk = inference_pb2.GenerateChunk(
        text="".join(e.text for e in events),
        token_ids=[e.token_id for e in events if e.token_id is not None],
    )
    final = events[-1]
    if final.finish_reason is not None:
        chunk.done = True
        chunk.finish_reason = final.finish_reason
        if final.metrics is not None:
            m = final.metrics
            chunk.usage.prompt_tokens, chunk.usage.completion_tokens = m.tokens_in, m.tokens_out
            chunk.timings.queue_s = m.queue_s
            chunk.timings.time_to_first_token_s = m.time_to_first_token_s
            chunk.timings.mean_inter_token_s = m.mean_inter_token_s
            chunk.timings.total_s = m.total_s
    return {"chunk": np.array([chunk.SerializeToString()], dtype=object)}


def bindings(served: ServedModel) -> list[dict[str, Any]]:
    """Arguments for `Triton.bind` of each of the model's Triton models."""
    text = {"dtype": bytes, "shape": (1,)}
    batcher = DynamicBatcher(max_queue_delay_microseconds=2000)
    return [
        {
            "model_name": triton_name(served.name, GENERATE),
            "infer_func": served.generate,
            "inputs": [
                Tensor(name="request_key", **text),
                Tensor(name="prompt", **text, optional=True),
                Tensor(name="messages_json", **text, optional=True),
                Tensor(name="params_json", **text, optional=True),
            ],
            "outputs": [Tensor(name="chunk", **text)],  # a serialized llmos.v1.GenerateChunk
            "config": ModelConfig(decoupled=True, batching=False),
        },
        {
            "model_name": triton_name(served.name, CANCEL),
            "infer_func": served.cancel,
            "inputs": [Tensor(name="request_key", **text)],
            "outputs": [Tensor(name="cancelled", dtype=np.bool_, shape=(1,))],
            "config": ModelConfig(batching=False),
        },
        {
            "model_name": triton_name(served.name, EMBED),
            "infer_func": served.embed,
            "inputs": [Tensor(name="text", **text)],
            "outputs": [
                Tensor(name="embedding", dtype=np.float32, shape=(-1,)),
                Tensor(name="tokens", dtype=np.int64, shape=(1,)),
            ],
            "config": ModelConfig(max_batch_size=32, batcher=batcher),
        },
        {
            "model_name": triton_name(served.name, CLASSIFY),
            "infer_func": served.classify,
            "inputs": [
                Tensor(name="text", **text),
                Tensor(name="labels_json", **text),
                Tensor(name="label", **text),
            ],
            "outputs": [
                Tensor(name="log_likelihood", dtype=np.float64, shape=(1,)),
                Tensor(name="tokens", dtype=np.int64, shape=(1,)),
            ],
            "config": ModelConfig(max_batch_size=32, batcher=batcher),
        },
    ]
