"""The Python-backend model Triton runs for every LLM entry of the generated repository.

Triton starts one stub process per model instance and calls `initialize` with the
configuration (repository.py wrote it), then `execute` with requests. The model is
decoupled: `execute` hands each request to the hosted LLM and returns at once, and the
answers are sent later, from other threads, through the request's response sender —
which is what lets new requests join running generations (continuous batching).

Each request carries a `task` (repository.TASKS) and a `request`: the serialized
GenerateWork, EmbedWork or ClassifyWork, or for `cancel` the request key. Each answer is
one `response` tensor: a serialized GenerateChunk (several per generation, the last one
flagged final), EmbedResult or ClassifyResult, or for `cancel` b"1"/b"0". A refusal is a
Triton error with a coded message (wire.py) that the worker turns back into the right
status and field.

This module is imported only inside Triton (`triton_python_backend_utils` exists there).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from llmos import tracing
from llmos.errors import InvalidArgument, LLMOSError
from llmos.log import configure_logging
from llmos.v1 import inference_pb2
from services.inference_worker.hosted import HostedLLM, HostOptions, Send
from services.inference_worker.repository import (
    CANCEL,
    CLASSIFY,
    EMBED,
    GENERATE,
    STATS,
    TASKS,
    entry_parameters,
)
from services.inference_worker.wire import encode_error

log = logging.getLogger("llmos.triton.backend")

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def host_options(args: dict[str, Any]) -> tuple[Path, HostOptions]:
    """The model folder and how to run it, from what Triton passes to `initialize`."""
    parameters, device = entry_parameters(args)
    options = HostOptions(
        device=device,
        precision=parameters.get("precision", "auto"),
        max_batch=int(parameters.get("max_batch", "32")),
        max_context=int(parameters.get("max_context", "2048")),
        prefix_cache_tokens=int(parameters.get("prefix_cache_tokens", "0")),
        coalesce_tokens=int(parameters.get("coalesce_tokens", "1")),
    )
    return Path(parameters["model_folder"]), options


def _sender(request: Any) -> Send:
    response_sender = request.get_response_sender()

    def send(payload: bytes, final: bool) -> None:
        tensor = pb_utils.Tensor("response", np.array([payload], dtype=np.object_))
        response_sender.send(
            pb_utils.InferenceResponse(output_tensors=[tensor]), flags=FINAL if final else 0
        )

    return send


def _refuse(request: Any, error: LLMOSError) -> None:
    request.get_response_sender().send(
        pb_utils.InferenceResponse(error=pb_utils.TritonError(encode_error(error))), flags=FINAL
    )


def _input(request: Any, name: str) -> bytes:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise InvalidArgument(name, "is missing")
    values = tensor.as_numpy().reshape(-1)
    if len(values) != 1:
        raise InvalidArgument(name, "must hold exactly one value")
    return bytes(values[0])


class TritonPythonModel:
    """Triton's entry points around one HostedLLM."""

    llm: HostedLLM

    def initialize(self, args: dict[str, Any]) -> None:
        # the stub's output goes to Triton's log (the worker's triton-<id>.log)
        configure_logging(
            "triton-backend",
            os.environ.get("LLMOS_LOG_LEVEL", "info"),
            os.environ.get("LLMOS_LOG_FORMAT", "text"),
        )
        # the engine's spans, under the worker's "triton infer" (OTEL_* come from its env)
        tracing.configure("engine", f"{args['model_name']}@{os.getpid()}")
        folder, options = host_options(args)
        self.llm = HostedLLM(folder, options)
        choice = self.llm.engine.precision
        log.info(
            "model %s ready on %s in %s (%s)",
            args.get("model_name"),
            options.device,
            choice.name,
            choice.reason,
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            try:
                self._dispatch(request)
            except LLMOSError as exc:
                _refuse(request, exc)
            except Exception:
                log.exception("a request failed")
                _refuse(request, LLMOSError("the model failed to run the request"))
        return None

    def _dispatch(self, request: Any) -> None:
        task = _input(request, "task").decode("utf-8", errors="replace")
        payload = _input(request, "request")
        if task not in TASKS:
            raise InvalidArgument("task", f"must be one of {', '.join(TASKS)}")
        if task == GENERATE:
            self.llm.generate(inference_pb2.GenerateWork.FromString(payload), _sender(request))
        elif task == EMBED:
            self.llm.embed(inference_pb2.EmbedWork.FromString(payload), _sender(request))
        elif task == CLASSIFY:
            self.llm.classify(inference_pb2.ClassifyWork.FromString(payload), _sender(request))
        elif task == CANCEL:
            cancelled = self.llm.cancel(payload.decode("utf-8", errors="replace"))
            _sender(request)(b"1" if cancelled else b"0", True)
        elif task == STATS:
            _sender(request)(self.llm.stats().SerializeToString(), True)

    def finalize(self) -> None:
        self.llm.close()
