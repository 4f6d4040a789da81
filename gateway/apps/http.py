"""The applications over HTTP, beside the OpenAI-compatible endpoints and in their style
(JSON in and out, errors in OpenAI's shape, server-sent events for a streamed answer):

    POST /v1/entities                  ExtractEntities
    POST /v1/translations              Translate
    POST /v1/assistants/{kb}/ask       Ask ("stream": true for events)

Each runs under the guard as the gRPC method it stands for, and the gRPC servicer does
the work: this module only translates JSON.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

from aiohttp import web

from gateway.apps.servicer import ApplicationsServicer
from gateway.openai.http import (
    DONE,
    SSE_HEADERS,
    Call,
    OpenAIHttp,
    event,
    json_body,
    write,
)
from llmos.errors import InvalidArgument
from llmos.log import request_id_var
from llmos.rpc import REQUEST_ID_KEY
from llmos.v1 import apps_pb2, inference_pb2

_RPC = "/llmos.v1.Applications/"


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object")
    return body


def _string(body: dict[str, Any], key: str, required: bool = False) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise InvalidArgument(key, "must be a string")
    if required and not value:
        raise InvalidArgument(key, "is required")
    return value


def _strings(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(key, "must be a string or a list of strings")
    return value


def _texts(body: dict[str, Any]) -> list[str]:
    """`texts`, or OpenAI's `input` (a string or a list of strings)."""
    return _strings(body, "texts" if "texts" in body else "input")


def _usage(usage: inference_pb2.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _entity(entity: inference_pb2.Entity) -> dict[str, Any]:
    return {"start": entity.start, "end": entity.end, "label": entity.label, "text": entity.text}


def _citation(citation: apps_pb2.Citation) -> dict[str, Any]:
    return {
        "number": citation.number,
        "document": citation.document,
        "chunk": citation.chunk,
        "start": citation.start,
        "end": citation.end,
        "text": citation.text,
        "score": citation.score,
    }


def ask_request(knowledge_base: str, body: dict[str, Any]) -> apps_pb2.AskRequest:
    top_k = body.get("top_k", 0)
    if not isinstance(top_k, int) or isinstance(top_k, bool):
        raise InvalidArgument("top_k", "must be an integer")
    max_tokens = body.get("max_tokens", 0)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise InvalidArgument("max_tokens", "must be an integer")
    handoff = body.get("handoff", False)
    if not isinstance(handoff, bool):
        raise InvalidArgument("handoff", "must be true or false")
    return apps_pb2.AskRequest(
        knowledge_base=knowledge_base,
        question=_string(body, "question", required=True),
        conversation_id=_string(body, "conversation_id"),
        model=_string(body, "model"),
        top_k=top_k,
        handoff=handoff,
        max_tokens=max_tokens,
    )


class ApplicationsHttp:
    """Routes the applications' endpoints to their servicer through the guard."""

    def __init__(self, servicer: ApplicationsServicer, openai: OpenAIHttp) -> None:
        self._servicer = servicer
        self._openai = openai

    def add_routes(self, app: web.Application) -> None:
        """Before the OpenAI routes: their catch-all answers any other `/v1/` path."""
        app.router.add_post("/v1/entities", self._entities)
        app.router.add_post("/v1/translations", self._translations)
        app.router.add_post("/v1/assistants/{kb}/ask", self.ask)

    async def _entities(self, request: web.Request) -> web.StreamResponse:
        async def answer(call: Call) -> web.StreamResponse:
            body = _object(await json_body(request))
            parsed = apps_pb2.ExtractEntitiesRequest(
                model=_string(body, "model"), texts=_texts(body), labels=_strings(body, "labels")
            )
            result = await self._servicer.ExtractEntities(parsed, call.context)
            return web.json_response(
                {
                    "object": "list",
                    "model": result.model,
                    "data": [
                        {"index": i, "entities": [_entity(e) for e in r.entities]}
                        for i, r in enumerate(result.results)
                    ],
                    "usage": _usage(result.usage),
                }
            )

        return await self._openai.guarded(request, _RPC + "ExtractEntities", answer)

    async def _translations(self, request: web.Request) -> web.StreamResponse:
        async def answer(call: Call) -> web.StreamResponse:
            body = _object(await json_body(request))
            parsed = apps_pb2.TranslateRequest(
                model=_string(body, "model"),
                texts=_texts(body),
                source=_string(body, "source"),
                target=_string(body, "target"),
            )
            result = await self._servicer.Translate(parsed, call.context)
            return web.json_response(
                {
                    "object": "list",
                    "model": result.model,
                    "data": [
                        {"index": i, "translation": text}
                        for i, text in enumerate(result.translations)
                    ],
                    "usage": _usage(result.usage),
                }
            )

        return await self._openai.guarded(request, _RPC + "Translate", answer)

    async def ask(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/assistants/{kb}/ask` (the console's assistant page calls it too)."""

        async def answer(call: Call) -> web.StreamResponse:
            body = _object(await json_body(request))
            parsed = ask_request(request.match_info["kb"], body)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise InvalidArgument("stream", "must be true or false")
            # closed as soon as this handler ends: a client gone stops the answer now
            async with aclosing(self._servicer.Ask(parsed, call.context)) as responses:
                # the first message is awaited before the headers: refusals stay statuses
                first = await anext(responses)
                if stream:
                    return await self._stream(call, first, responses)
                whole = _whole(first)
                async for message in responses:
                    _add(whole, message)
                return web.json_response(whole)

        return await self._openai.guarded(request, _RPC + "Ask", answer)

    async def _stream(
        self, call: Call, first: apps_pb2.AskResponse, rest: Any
    ) -> web.StreamResponse:
        stream = web.StreamResponse(headers={**SSE_HEADERS, REQUEST_ID_KEY: request_id_var.get()})
        await stream.prepare(call.request)
        call.stream = stream
        await event(stream, _event_of(first))
        async for message in rest:
            await event(stream, _event_of(message))
        await write(stream, DONE)
        return stream


def _whole(first: apps_pb2.AskResponse) -> dict[str, Any]:
    whole: dict[str, Any] = {
        "object": "assistant.answer",
        "conversation_id": first.conversation_id,
        "answer": "",
        "answered": first.answered,
        "handed_off": first.handed_off,
        "citations": [_citation(c) for c in first.citations],
        "model": first.model,
        "usage": _usage(first.usage),
    }
    _add(whole, first, citations=False)
    return whole


def _add(whole: dict[str, Any], message: apps_pb2.AskResponse, citations: bool = True) -> None:
    whole["answer"] += message.text
    whole["model"] = message.model or whole["model"]
    if message.done:
        whole["usage"] = _usage(message.usage)
    if citations and message.citations:
        whole["citations"] = [_citation(c) for c in message.citations]


def _event_of(message: apps_pb2.AskResponse) -> dict[str, Any]:
    payload: dict[str, Any] = {"object": "assistant.answer.chunk", "delta": message.text}
    if message.conversation_id:
        payload["conversation_id"] = message.conversation_id
        payload["answered"] = message.answered
        payload["handed_off"] = message.handed_off
        payload["citations"] = [_citation(c) for c in message.citations]
    if message.model:
        payload["model"] = message.model
    if message.done:
        payload["done"] = True
        payload["usage"] = _usage(message.usage)
    return payload
