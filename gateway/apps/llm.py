"""The chat model, as the applications use it: through the gateway's own Chat, so a
prompt an application writes is queued, placed, limited and cached like any caller's.

The applications run inside a guarded call (ExtractEntities, Translate, Ask) whose call
record the inner Chat also writes; the tokens of every inner call are summed here and
set once, so the caller pays for all of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.auth.principal import call_record
from llmos.v1 import gateway_pb2, inference_pb2

if TYPE_CHECKING:
    from gateway.servicer import GatewayServicer


@dataclass
class Reply:
    text: str
    model: str
    usage: inference_pb2.Usage


def message(role: str, content: str) -> inference_pb2.ChatMessage:
    return inference_pb2.ChatMessage(role=role, content=content)


class ChatModel:
    """Complete or stream a chat with the model a caller names (default: the default)."""

    def __init__(self, gateway: GatewayServicer) -> None:
        self._gateway = gateway

    async def stream(
        self, model: str, messages: list[inference_pb2.ChatMessage], max_tokens: int
    ) -> AsyncIterator[gateway_pb2.GenerateResponse]:
        """The answer's chunks, greedy (an application's answers are reproducible)."""
        request = gateway_pb2.ChatRequest(
            model=model,
            messages=messages,
            params=inference_pb2.GenerationParams(max_tokens=max_tokens),
        )
        record = call_record()
        before = record.tokens
        chunks = self._gateway.Chat(request, None)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        record.tokens += before

    async def complete(
        self, model: str, messages: list[inference_pb2.ChatMessage], max_tokens: int
    ) -> Reply:
        """The whole answer."""
        text, served, usage = [], model, inference_pb2.Usage()
        async for chunk in self.stream(model, messages, max_tokens):
            text.append(chunk.text)
            served = chunk.model or served
            if chunk.done:
                usage = chunk.usage
        return Reply("".join(text), served, usage)
