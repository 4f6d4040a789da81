"""The chat model, as the applications use it: through the gateway's own Chat, so a
prompt an application writes is queued, placed, limited and cached like any caller's.

The applications run inside a guarded call (ExtractEntities, Translate, Ask) whose call
record the inner Chat also writes: `inner_call` adds its tokens to the caller's (who pays
for all of them) and keeps the caller's own resource and audit fields."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.auth.principal import inner_call
from llmos.v1 import gateway_pb2, inference_pb2

if TYPE_CHECKING:
    from gateway.servicer import GatewayServicer


@dataclass
class Replies:
    """The chat model's answers to several texts, with the usage of them all."""

    texts: list[str]
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
    ) -> AsyncGenerator[gateway_pb2.GenerateResponse, None]:
        """The answer's chunks, greedy (an application's answers are reproducible)."""
        request = gateway_pb2.ChatRequest(
            model=model,
            messages=messages,
            params=inference_pb2.GenerationParams(max_tokens=max_tokens),
        )
        chunks = self._gateway.Chat(request, None)
        with inner_call():
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]

    async def instruct_each(
        self, model: str, system: str, texts: list[str], max_tokens: Callable[[str], int]
    ) -> Replies:
        """The whole answer to each text under one system prompt, one text at a time (an
        application's instruction applied to every text of a call)."""
        replies = Replies([], model, inference_pb2.Usage())
        for text in texts:
            messages = [message("system", system), message("user", text)]
            pieces = []
            async for chunk in self.stream(model, messages, max_tokens(text)):
                pieces.append(chunk.text)
                replies.model = chunk.model or replies.model
                if chunk.done:
                    replies.usage.prompt_tokens += chunk.usage.prompt_tokens
                    replies.usage.completion_tokens += chunk.usage.completion_tokens
            replies.texts.append("".join(pieces))
        return replies
