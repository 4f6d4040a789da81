"""Translation: a translation model serving the language pair, else the chat model.

Which models translate which pairs the gateway learns from the workers' heartbeats (each
lists its loaded task models with their pairs), so choosing one costs no round trip. A
caller may name a model: a translation model must serve the pair; naming an LLM asks it
with a translation prompt. The response always says which model answered.
"""

from __future__ import annotations

import time

from gateway.apps.checks import MAX_LLM_TEXT_CHARS, check_texts
from gateway.apps.llm import ChatModel
from gateway.auth.principal import call_record, caller
from gateway.deployments import Deployments
from gateway.inference import InferenceRouter
from llmos.errors import InvalidArgument
from llmos.languages import check_language, language_name
from llmos.model.names import served_owner, visible_to
from llmos.model.tasks import TRANSLATION
from llmos.v1 import apps_pb2, inference_pb2, scheduler_pb2
from llmos.workers import INFERENCE_WORKER, WorkerTable

TRANSLATION_PROMPT = """\
Translate the user's text from {source} to {target}. Reply with the translation only."""


class Translator:
    """Translate, by whichever model serves the pair."""

    def __init__(
        self,
        router: InferenceRouter,
        deployments: Deployments,
        chat: ChatModel,
        workers: WorkerTable,
    ) -> None:
        self._router = router
        self._deployments = deployments
        self._chat = chat
        self._workers = workers

    def _task_models(self) -> dict[str, scheduler_pb2.TaskModel]:
        """Task models some live worker serves now, by name."""
        return {
            task.name: task
            for status in self._workers.alive(time.monotonic(), INFERENCE_WORKER)
            for task in status.task_models
        }

    @staticmethod
    def serving(
        tasks: dict[str, scheduler_pb2.TaskModel], source: str, target: str, tenant: str
    ) -> str:
        """Of `tasks`, a translation model the tenant may use that serves the pair ("" if
        none): the tenant's own deployment before a shared one."""
        pair = f"{source}>{target}"
        candidates = [
            name
            for name, task in tasks.items()
            if task.kind == TRANSLATION and pair in task.pairs and visible_to(name, tenant)
        ]
        return min(candidates, key=lambda name: (served_owner(name) != tenant, name), default="")

    async def translate(
        self, request: apps_pb2.TranslateRequest, request_id: str
    ) -> apps_pb2.TranslateResponse:
        source = check_language(request.source, "source")
        target = check_language(request.target, "target")
        if source == target:
            raise InvalidArgument("target", f"is the source language ({source!r}) too")
        texts = list(request.texts)
        tenant = caller().tenant
        tasks = self._task_models()
        model = (
            await self._deployments.resolve(tenant, request.model)
            if request.model
            else self.serving(tasks, source, target, tenant)
        )
        task = tasks.get(model)
        if task is not None and task.kind != TRANSLATION:
            raise InvalidArgument(
                "model", f"{model!r} is a {task.kind} model; it does not translate"
            )
        if task is None:  # an LLM: named, or none serves the pair
            check_texts(texts, MAX_LLM_TEXT_CHARS)
            return await self._by_chat_model(request.model, texts, source, target)
        if f"{source}>{target}" not in task.pairs:
            raise InvalidArgument(
                "target",
                f"model {model!r} translates {', '.join(task.pairs)}, not {source}>{target}",
            )
        check_texts(texts)
        call_record().resource = f"model/{model}"
        result = await self._router.translate(
            inference_pb2.TranslateWork(
                request_id=request_id, model=model, texts=texts, source=source, target=target
            )
        )
        call_record().tokens = result.source_tokens + result.target_tokens
        return apps_pb2.TranslateResponse(
            translations=result.translations,
            model=model,
            usage=inference_pb2.Usage(
                prompt_tokens=result.source_tokens, completion_tokens=result.target_tokens
            ),
        )

    async def _by_chat_model(
        self, model: str, texts: list[str], source: str, target: str
    ) -> apps_pb2.TranslateResponse:
        system = TRANSLATION_PROMPT.format(
            source=language_name(source), target=language_name(target)
        )
        replies = await self._chat.instruct_each(
            model,
            system,
            texts,
            lambda text: min(1024, max(32, len(text) // 2)),  # ~4 characters a token, and room
        )
        return apps_pb2.TranslateResponse(
            translations=[reply.strip() for reply in replies.texts],
            model=replies.model,
            usage=replies.usage,
        )
