"""The gRPC API's answers as OpenAI response objects. Pure logic, no I/O."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmos.model.names import served_owner
from llmos.v1 import gateway_pb2, inference_pb2

JSON = dict[str, Any]


@dataclass
class Choice:
    """One generation as it arrives, message by message."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[inference_pb2.TokenLogprob] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, response: gateway_pb2.GenerateResponse) -> None:
        self.text += response.text
        self.logprobs.extend(response.logprobs)
        if response.done:
            self.finish_reason = finish_reason(response.finish_reason)
            self.prompt_tokens = response.usage.prompt_tokens
            self.completion_tokens = response.usage.completion_tokens


def finish_reason(reason: str) -> str:
    """OpenAI knows `stop` (end of text or a stop sequence) and `length`."""
    return "length" if reason == "length" else "stop"


def usage(choices: Sequence[Choice], per_prompt: int) -> JSON:
    """Token counts: each prompt once (as OpenAI counts `n` choices), every completion."""
    prompt = sum(c.prompt_tokens for c in choices[::per_prompt])
    completion = sum(c.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _text(token: bytes) -> str:
    return token.decode("utf-8", errors="replace")


def chat_logprobs(entries: Iterable[inference_pb2.TokenLogprob]) -> JSON:
    """Chat's `logprobs`: per token, its text, bytes and log-probability, and the top."""

    def one(entry: inference_pb2.TokenLogprob) -> JSON:
        return {"token": _text(entry.token), "logprob": entry.logprob, "bytes": list(entry.token)}

    return {
        "content": [{**one(e), "top_logprobs": [one(t) for t in e.top]} for e in entries],
        "refusal": None,
    }


def completion_logprobs(entries: Sequence[inference_pb2.TokenLogprob], offset: int = 0) -> JSON:
    """The completions API's older `logprobs` shape: parallel lists."""
    offsets, position = [], offset
    for entry in entries:
        offsets.append(position)
        position += len(_text(entry.token))
    return {
        "tokens": [_text(e.token) for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{_text(t.token): t.logprob for t in e.top} for e in entries],
        "text_offset": offsets,
    }


def chat_completion(
    response_id: str, created: int, model: str, choices: Sequence[Choice], per_prompt: int
) -> JSON:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text, "refusal": None},
                "logprobs": chat_logprobs(c.logprobs) if c.logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage(choices, per_prompt),
    }


def text_completion(
    response_id: str, created: int, model: str, choices: Sequence[Choice], per_prompt: int
) -> JSON:
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "logprobs": completion_logprobs(c.logprobs) if c.logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage(choices, per_prompt),
    }


def embeddings(answer: gateway_pb2.EmbedResponse, as_base64: bool) -> JSON:
    """Float lists, or (what the openai SDK asks for) base64 of little-endian float32."""

    def vector(values: Sequence[float]) -> Any:
        if as_base64:
            return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        return list(values)

    return {
        "object": "list",
        "model": answer.model,
        "data": [
            {"object": "embedding", "index": i, "embedding": vector(e.values)}
            for i, e in enumerate(answer.embeddings)
        ],
        "usage": {
            "prompt_tokens": answer.usage.prompt_tokens,
            "total_tokens": answer.usage.prompt_tokens,
        },
    }


def model_object(info: gateway_pb2.ModelInfo) -> JSON:
    """A served model; its owner is the tenant that deployed it, or LLM OS."""
    return {
        "id": info.name,
        "object": "model",
        "created": 0,
        "owned_by": served_owner(info.name) or "llmos",
    }
