"""The OpenAI-compatible endpoints on the gateway's HTTP server.

Each request runs inside the same guard as a gRPC call of the method it stands for
(`/v1/chat/completions` is `Chat`, `/v1/completions` `Generate`, `/v1/embeddings`
`Embed`, `/v1/models` `ListModels`): token or API key, scope, blocks, rate limits,
quota charging, intrusion signals and the audit record are the gRPC API's, and the
work is done by the gRPC servicer's own methods. This module only translates.

A streamed answer is sent as server-sent events. Errors found before the first token
(a bad parameter, an unknown model, a full quota) are HTTP statuses; later ones end
the stream with an error event. A client that disconnects cancels the handler (the
server runs with handler cancellation), which closes the generation and frees its
slot in the engine at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from gateway.auth.principal import CallRecord, call_record, current_call
from gateway.firewall import Blocked
from gateway.guard import GatewayGuard
from gateway.openai import responses, schema
from gateway.openai.errors import error_body, failure_of
from gateway.servicer import GatewayServicer
from llmos import tracing
from llmos.errors import Cancelled, InvalidArgument, LLMOSError, NotFound, Unavailable
from llmos.log import request_id_var
from llmos.rpc import REQUEST_ID_KEY, request_id_from
from llmos.v1 import gateway_pb2

log = logging.getLogger("llmos.gateway.openai")

_RPC = "/llmos.v1.Gateway/"
#: `X-Accel-Buffering`: a proxy (nginx) passes each event on at once
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
#: messages of several choices waiting for a slow reader before the choices wait too
CHOICE_BUFFER = 64
DONE = b"data: [DONE]\n\n"

Request = gateway_pb2.ChatRequest | gateway_pb2.GenerateRequest
Indexed = tuple[int, gateway_pb2.GenerateResponse]


class HttpCallContext:
    """What the guard reads from a gRPC call (peer, metadata), read from an HTTP request:
    the headers are the metadata (`authorization`, `x-forwarded-for`, `x-request-id`)."""

    def __init__(self, request: web.Request) -> None:
        self._request = request

    def peer(self) -> str:
        peername = (
            self._request.transport.get_extra_info("peername") if self._request.transport else None
        )
        if not peername:
            return "unknown"
        host, port = str(peername[0]), peername[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple((key.lower(), value) for key, value in self._request.headers.items())


class Call:
    """One HTTP request's state shared with its error handling."""

    def __init__(self, request: web.Request, context: HttpCallContext) -> None:
        self.request = request
        self.context = context
        self.aliases: dict[str, str] = {}
        self.stream: web.StreamResponse | None = None  # once an event stream has begun


Answer = Callable[[Call], Awaitable[web.StreamResponse]]


class OpenAIHttp:
    """Routes `/v1/...` to the gRPC servicer through the gRPC API's guard."""

    def __init__(self, servicer: GatewayServicer, guard: GatewayGuard) -> None:
        self._servicer = servicer
        self._guard = guard

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model:.+}", self._model)
        app.router.add_route("*", "/v1/{anything:.*}", not_found)

    # -- the guarded call ----------------------------------------------------------------

    async def _guarded(
        self, request: web.Request, method: str, answer: Answer
    ) -> web.StreamResponse:
        return await self.guarded(request, _RPC + method, answer)

    async def guarded(self, request: web.Request, rpc: str, answer: Answer) -> web.StreamResponse:
        """Run `answer` as the gRPC method `rpc` (its full name) would run: under the
        guard, with errors in OpenAI's shape. Other HTTP APIs of the gateway use it too."""
        call = Call(request, HttpCallContext(request))
        rid = request_id_from(call.context.invocation_metadata())
        token = request_id_var.set(rid)
        # a W3C `traceparent` header continues the caller's trace (this task is the request's)
        tracing.incoming.set(tracing.traceparent_in(call.context.invocation_metadata()))
        try:
            async with self._guard.guard(rpc, call.context):
                response = await answer(call)
            if not response.prepared:  # a stream named it in its headers
                response.headers[REQUEST_ID_KEY] = rid
            return response
        except Exception as exc:
            if not isinstance(exc, LLMOSError):
                log.error("unhandled error in an OpenAI call", exc_info=exc)
            retry = exc.block.retry_after_s() if isinstance(exc, Blocked) else None
            failure = failure_of(exc, retry, request_id=rid, aliases=call.aliases)
            if call.stream is None:
                return failure.response()
            if not isinstance(exc, Cancelled):  # begun: the stream's last event says why
                with contextlib.suppress(ConnectionError):
                    await event(call.stream, failure.body)
            return call.stream
        finally:
            request_id_var.reset(token)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        async def answer(call: Call) -> web.StreamResponse:
            parsed = schema.chat_call(await json_body(request), _priority(request))
            return await self._generation(call, parsed)

        return await self._guarded(request, "Chat", answer)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        async def answer(call: Call) -> web.StreamResponse:
            parsed = schema.completion_call(await json_body(request), _priority(request))
            return await self._generation(call, parsed)

        return await self._guarded(request, "Generate", answer)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        async def answer(call: Call) -> web.StreamResponse:
            parsed = schema.embedding_call(await json_body(request))
            result = await self._servicer.Embed(parsed.request, call.context)
            return web.json_response(responses.embeddings(result, parsed.base64))

        return await self._guarded(request, "Embed", answer)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        async def answer(call: Call) -> web.StreamResponse:
            listed = await self._listed(call)
            return web.json_response(
                {"object": "list", "data": [responses.model_object(m) for m in listed]}
            )

        return await self._guarded(request, "ListModels", answer)

    async def _model(self, request: web.Request) -> web.StreamResponse:
        wanted = request.match_info["model"]

        async def answer(call: Call) -> web.StreamResponse:
            for info in await self._listed(call):
                if info.name == wanted:
                    return web.json_response(responses.model_object(info))
            raise NotFound(f"model {wanted!r} does not exist or is not served")

        return await self._guarded(request, "ListModels", answer)

    async def _listed(self, call: Call) -> list[gateway_pb2.ModelInfo]:
        listed = await self._servicer.ListModels(gateway_pb2.ListModelsRequest(), call.context)
        return list(listed.models)

    # -- generations ---------------------------------------------------------------------

    async def _run(
        self, kind: str, request: Request, call: Call
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        """One generation through the servicer (validation, model, cache, scheduler). One
        the worker cut short (a model unloaded, a shutdown) is an error, not an answer:
        OpenAI's finish reasons have no word for it, and it must not pass for complete."""
        method = self._servicer.Chat if kind == "chat" else self._servicer.Generate
        generation = cast(
            AsyncGenerator[gateway_pb2.GenerateResponse, None],
            method(request, call.context),  # type: ignore[arg-type]
        )
        async with contextlib.aclosing(generation) as responses_:
            async for response in responses_:
                if response.done and response.finish_reason == "cancelled":
                    raise Unavailable("the worker stopped this generation before its end; retry")
                yield response

    async def _choices(
        self, parsed: schema.GenerationCall, call: Call
    ) -> AsyncGenerator[Indexed, None]:
        """Every choice's messages as they come, tagged with the choice's index. Several
        choices run at once, each with a call record of its own, summed into the call's
        (which the guard audits and charges): each prompt is charged once, as `usage`
        reports it, however many choices were drawn from it."""
        runs = parsed.choices()
        if len(runs) == 1:
            async for response in self._run(parsed.kind, runs[0], call):
                yield 0, response
            return
        parent = call_record()
        records = [CallRecord(principal=parent.principal) for _ in runs]
        queue: asyncio.Queue[tuple[int, gateway_pb2.GenerateResponse | Exception | None]]
        queue = asyncio.Queue(maxsize=CHOICE_BUFFER)  # a slow reader holds the choices back

        async def pump(index: int, run: Request) -> None:
            record = records[index]
            current_call.set(record)  # this task's own context
            ending: Exception | None = None
            try:
                async for response in self._run(parsed.kind, run, call):
                    if response.done and index % parsed.n:  # the prompt's first choice pays it
                        record.tokens -= response.usage.prompt_tokens
                    await queue.put((index, response))
            except Exception as exc:
                ending = exc
            finally:  # cancelled or not, the reader hears that this choice has ended
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait((index, ending))

        tasks = [asyncio.create_task(pump(i, run)) for i, run in enumerate(runs)]
        try:
            running = len(tasks)
            while running:
                index, item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                if item is None:
                    running -= 1
                else:
                    yield index, item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            parent.tokens = sum(r.tokens for r in records)
            parent.resource = records[0].resource
            parent.cached = all(r.cached for r in records)
            parent.prompt = records[0].prompt
            parent.output = "\n".join(r.output for r in records)

    async def _generation(self, call: Call, parsed: schema.GenerationCall) -> web.StreamResponse:
        call.aliases.update(parsed.aliases)
        created = int(time.time())
        prefix = "chatcmpl" if parsed.kind == "chat" else "cmpl"
        response_id = f"{prefix}-{uuid.uuid4().hex}"
        choices = [responses.Choice(i) for i in range(len(parsed.requests) * parsed.n)]
        # closed here, inside the guard, however this ends: the generations stop and their
        # tokens are counted before the guard charges and audits the call
        async with contextlib.aclosing(self._choices(parsed, call)) as messages:
            if parsed.stream:
                stream = _SseStream(call, parsed, response_id, created, choices)
                return await stream.send(messages)
            model = parsed.model
            async for index, message in messages:
                choices[index].add(message)
                model = model or message.model
        build = responses.chat_completion if parsed.kind == "chat" else responses.text_completion
        return web.json_response(build(response_id, created, model, choices, parsed.n))


class _SseStream:
    """Chunks of one streamed chat or completion, as OpenAI sends them."""

    def __init__(
        self,
        call: Call,
        parsed: schema.GenerationCall,
        response_id: str,
        created: int,
        choices: list[responses.Choice],
    ) -> None:
        self._call = call
        self._parsed = parsed
        self._chat = parsed.kind == "chat"
        self._id = response_id
        self._created = created
        self._choices = choices
        self._model = parsed.model

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk" if self._chat else "text_completion",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self._parsed.include_usage:
            chunk["usage"] = None
        chunk.update(extra)
        return chunk

    def _delta(
        self,
        index: int,
        text: str | None,
        logprobs: list[Any],
        reason: str | None,
        role: bool = False,
        offset: int = 0,
    ) -> dict[str, Any]:
        if self._chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {
                "index": index,
                "delta": delta,
                "logprobs": responses.chat_logprobs(logprobs) if logprobs else None,
                "finish_reason": reason,
            }
        return {
            "index": index,
            "text": text or "",
            "logprobs": responses.completion_logprobs(logprobs, offset) if logprobs else None,
            "finish_reason": reason,
        }

    async def send(self, messages: AsyncIterator[Indexed]) -> web.StreamResponse:
        # the first message is awaited before the headers: refusals stay HTTP statuses
        first = await anext(messages, None)
        stream = web.StreamResponse(headers={**SSE_HEADERS, REQUEST_ID_KEY: request_id_var.get()})
        await stream.prepare(self._call.request)
        self._call.stream = stream
        if first is not None:
            self._model = self._model or first[1].model
            if self._chat:
                for index in range(len(self._choices)):
                    await event(stream, self._chunk([self._delta(index, "", [], None, role=True)]))
            await self._forward(stream, *first)
            async for index, message in messages:
                await self._forward(stream, index, message)
        if self._parsed.include_usage:
            usage = responses.usage(self._choices, self._parsed.n)
            await event(stream, self._chunk([], usage=usage))
        await write(stream, DONE)
        return stream

    async def _forward(
        self, stream: web.StreamResponse, index: int, message: gateway_pb2.GenerateResponse
    ) -> None:
        offset = len(self._choices[index].text)  # where this message's text begins
        self._choices[index].add(message)
        if message.text or message.logprobs:
            delta = self._delta(index, message.text, list(message.logprobs), None, offset=offset)
            await event(stream, self._chunk([delta]))
        if message.done:
            reason = responses.finish_reason(message.finish_reason)
            await event(stream, self._chunk([self._delta(index, None, [], reason)]))


async def event(stream: web.StreamResponse, payload: dict[str, Any]) -> None:
    await write(stream, b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n")


async def write(stream: web.StreamResponse, data: bytes) -> None:
    """Send; a client that hung up cancels the call (as the gRPC API's would be)."""
    try:
        await stream.write(data)
    except ConnectionError:
        raise Cancelled("the client went away") from None


async def json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise InvalidArgument(
            "body", f"is larger than {request.app._client_max_size} bytes"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("body", "is not valid JSON") from None


def _priority(request: web.Request) -> str:
    return request.headers.get(schema.PRIORITY_HEADER, "")


async def not_found(request: web.Request) -> web.Response:
    """Unknown `/v1/` paths, in OpenAI's error shape."""
    message = f"no such endpoint: {request.method} {request.path}"
    return web.json_response(error_body(message, "invalid_request_error"), status=404)
