"""Named entities: an entity model on the workers, or the chat model for custom types.

Without labels the request goes to the entity model (spaCy by default), which Triton
batches with other callers' requests. With labels the chat model is asked, text by text,
for the entities of those types, and its answer is only a list of candidates: a span is
kept only where it occurs in the text, at offsets computed here, so a model that invents
or misquotes a span cannot put it in the answer.
"""

from __future__ import annotations

import re

from gateway.apps.checks import MAX_LLM_TEXT_CHARS, check_labels, check_texts
from gateway.apps.llm import ChatModel
from gateway.auth.principal import call_record, caller
from gateway.deployments import Deployments
from gateway.inference import InferenceRouter
from llmos.model.tasks import DEFAULT_ENTITIES_MODEL
from llmos.v1 import apps_pb2, inference_pb2

#: tokens the chat model may spend listing one text's entities
EXTRACTION_TOKENS = 160

EXTRACTION_PROMPT = """\
You extract named entities from a text. The entity types are: {labels}.
Write one entity per line as TYPE: exact words from the text.
Copy the words exactly as they appear. Write nothing else. If there are none, write NONE."""

_LINE = re.compile(r"^\s*[-*\d.)\s]*([A-Za-z_][A-Za-z0-9_ ]*?)\s*[:\t|=-]\s*(.+?)\s*$")


class EntityExtractor:
    """ExtractEntities, both ways."""

    def __init__(self, router: InferenceRouter, deployments: Deployments, chat: ChatModel) -> None:
        self._router = router
        self._deployments = deployments
        self._chat = chat

    async def extract(
        self, request: apps_pb2.ExtractEntitiesRequest, request_id: str
    ) -> apps_pb2.ExtractEntitiesResponse:
        texts = list(request.texts)
        if request.labels:
            check_texts(texts, MAX_LLM_TEXT_CHARS)
            return await self._by_chat_model(
                request.model, texts, check_labels(list(request.labels))
            )
        check_texts(texts)
        model = await self._deployments.resolve(
            caller().tenant, request.model or DEFAULT_ENTITIES_MODEL
        )
        call_record().resource = f"model/{model}"
        result = await self._router.entities(
            inference_pb2.EntitiesWork(request_id=request_id, model=model, texts=texts)
        )
        call_record().tokens = result.tokens
        return apps_pb2.ExtractEntitiesResponse(
            results=result.results,
            model=model,
            usage=inference_pb2.Usage(prompt_tokens=result.tokens),
        )

    async def _by_chat_model(
        self, model: str, texts: list[str], labels: list[str]
    ) -> apps_pb2.ExtractEntitiesResponse:
        system = EXTRACTION_PROMPT.format(labels=", ".join(labels))
        replies = await self._chat.instruct_each(model, system, texts, lambda _: EXTRACTION_TOKENS)
        return apps_pb2.ExtractEntitiesResponse(
            results=[
                grounded_entities(text, reply, labels)
                for text, reply in zip(texts, replies.texts, strict=True)
            ],
            model=replies.model,
            usage=replies.usage,
        )


def candidates(reply: str, labels: list[str]) -> list[tuple[str, str]]:
    """(label, span text) pairs the model listed, of the asked types only."""
    found = []
    for line in reply.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        label = match.group(1).strip().upper().replace(" ", "_")
        span = match.group(2).strip().strip("\"'`")
        if label in labels and span:
            found.append((label, span))
    return found


def grounded_entities(text: str, reply: str, labels: list[str]) -> inference_pb2.TextEntities:
    """The candidates that occur in `text`, at every occurrence, with their offsets; a
    candidate not in the text is dropped, and overlapping spans keep the earlier, longer."""
    spans: list[tuple[int, int, str]] = []
    for label, span in candidates(reply, labels):
        for match in re.finditer(re.escape(span), text):
            spans.append((match.start(), match.end(), label))
    spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))
    kept: list[tuple[int, int, str]] = []
    for start, end, label in spans:
        if kept and start < kept[-1][1]:
            continue
        kept.append((start, end, label))
    return inference_pb2.TextEntities(
        entities=[
            inference_pb2.Entity(start=start, end=end, label=label, text=text[start:end])
            for start, end, label in kept
        ]
    )
