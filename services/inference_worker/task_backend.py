"""The Python-backend model Triton runs for every task model (entities, translation).

Unlike an LLM's entry (triton_backend.py, decoupled, continuous batching inside the
engine), a task model answers each request once, so its entry uses Triton's own dynamic
batcher (repository.task_config_text): requests that arrive within a few milliseconds
of each other reach `execute` together, and the engine runs them as one batch.

Each request's `request` input is one serialized work message (EntitiesWork or
TranslateWork, shape [1, 1]: batch dimension first); each response's `response` output is
the serialized result, which carries a WorkError when the engine refused that work.

This module is imported only inside Triton (`triton_python_backend_utils` exists there).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]
from google.protobuf.message import Message

from llmos.log import configure_logging
from llmos.model.tasks import ENTITIES, TRANSLATION, TaskSpec, read_task
from llmos.v1 import inference_pb2
from services.inference_worker.repository import entry_parameters

log = logging.getLogger("llmos.triton.tasks")


class Engine(Protocol):
    def run(self, works: list[Any]) -> list[Any]: ...


def load_engine(folder: Path, spec: TaskSpec, device: str, threads: int) -> Engine:
    """The engine for the folder's kind (imported here: each stub needs only its own)."""
    if spec.kind == ENTITIES:
        from services.inference_worker.tasks.entities import Entities

        return Entities(folder, spec, device, threads)
    from services.inference_worker.tasks.translation import Translation

    return Translation(folder, spec, device, threads)


#: the work message each kind reads, and the result it answers
WORK_OF: dict[str, tuple[type[Message], type[Message]]] = {
    ENTITIES: (inference_pb2.EntitiesWork, inference_pb2.EntitiesResult),
    TRANSLATION: (inference_pb2.TranslateWork, inference_pb2.TranslateResult),
}
#: what a caller whose request failed inside the engine hears (the log has the details)
FAILED = "the model failed to run this request"


def _payload(request: Any) -> bytes:
    values = pb_utils.get_input_tensor_by_name(request, "request").as_numpy().reshape(-1)
    return bytes(values[0])


def _response(result: Message) -> Any:
    payload = np.array([[result.SerializeToString()]], dtype=np.object_)
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("response", payload)])


class TritonPythonModel:
    """Triton's entry points around one task engine."""

    def initialize(self, args: dict[str, Any]) -> None:
        configure_logging(
            "triton-tasks",
            os.environ.get("LLMOS_LOG_LEVEL", "info"),
            os.environ.get("LLMOS_LOG_FORMAT", "text"),
        )
        parameters, device = entry_parameters(args)
        folder = Path(parameters["model_folder"])
        spec = read_task(folder)
        if spec is None:
            raise RuntimeError(f"{folder} is not a task model")
        self.work_type, self.result_type = WORK_OF[spec.kind]
        self.engine = load_engine(folder, spec, device, int(parameters.get("threads", "1")))
        log.info("task model %s (%s) ready on %s", args.get("model_name"), spec.kind, device)

    def execute(self, requests: list[Any]) -> list[Any]:
        """One batch: the requests Triton's dynamic batcher gathered, often from several
        callers and tenants. If the batch fails, each request runs alone, so only the
        one that fails is refused."""
        works = [self._work(request) for request in requests]
        try:
            results = self.engine.run([work for work in works if work is not None])
        except Exception:
            log.exception("a batch failed; running its requests one by one")
            return [_response(self._alone(work)) for work in works]
        answers = iter(results)
        return [_response(next(answers) if work is not None else self._failed()) for work in works]

    def _work(self, request: Any) -> Message | None:
        try:
            return self.work_type.FromString(_payload(request))
        except Exception:
            log.exception("a request could not be read")
            return None

    def _alone(self, work: Message | None) -> Message:
        if work is None:
            return self._failed()
        try:
            result: Message = self.engine.run([work])[0]
            return result
        except Exception:
            log.exception("a request failed")
            return self._failed()

    def _failed(self) -> Message:
        return self.result_type(error=inference_pb2.WorkError(code="INTERNAL", message=FAILED))
