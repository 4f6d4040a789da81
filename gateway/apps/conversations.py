"""Conversation history for the assistant, in Redis: hot state every gateway replica
shares, kept a day after the last turn and capped to the latest turns (a prompt has a
budget; older turns matter least to the next answer).

A conversation belongs to the person (or program) who began it, with one knowledge base
of one tenant: all four are in its key, so an id guessed, reused or chosen by someone
else reads nothing of it and hands nothing of it to a person."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from llmos.v1 import inference_pb2

KEY = "llmos:conversations:"
TTL_S = 24 * 3600
#: messages kept per conversation (question and answer are two)
MAX_MESSAGES = 12


def new_conversation_id() -> str:
    return secrets.token_urlsafe(12)


@dataclass(frozen=True)
class Conversation:
    """Whose conversation, with which knowledge base, under which id."""

    tenant: str
    owner: str  # the principal's subject
    knowledge_base: str
    id: str

    def key(self) -> str:
        """Its Redis key: a digest, so no part can be made to read as another."""
        parts = json.dumps([self.tenant, self.owner, self.knowledge_base, self.id])
        return KEY + hashlib.sha256(parts.encode()).hexdigest()


class Conversations:
    """Conversations with the assistant."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def history(self, conversation: Conversation) -> list[inference_pb2.ChatMessage]:
        """The conversation so far, oldest first ([] for a new or expired one)."""
        raw: list[bytes] = await self._redis.lrange(conversation.key(), 0, -1)  # type: ignore[misc]
        return [inference_pb2.ChatMessage(**json.loads(item)) for item in raw]

    async def append(
        self, conversation: Conversation, *messages: inference_pb2.ChatMessage
    ) -> None:
        key = conversation.key()
        items = [json.dumps({"role": m.role, "content": m.content}) for m in messages]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *items)
            pipe.ltrim(key, -MAX_MESSAGES, -1)
            pipe.expire(key, TTL_S)
            await pipe.execute()
