"""Conversation history for the assistant, in Redis: hot state every gateway replica
shares, kept a day after the last turn and capped to the latest turns (a prompt has a
budget; older turns matter least to the next answer)."""

from __future__ import annotations

import json
import secrets

from redis.asyncio import Redis

from llmos.v1 import inference_pb2

KEY = "llmos:conversations:"
TTL_S = 24 * 3600
#: messages kept per conversation (question and answer are two)
MAX_MESSAGES = 12


def new_conversation_id() -> str:
    return secrets.token_urlsafe(12)


class Conversations:
    """A tenant's conversations with one knowledge base's assistant."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    @staticmethod
    def _key(tenant: str, knowledge_base: str, conversation_id: str) -> str:
        # tenant and knowledge base in the key: an id guessed or reused across tenants
        # or knowledge bases reads nothing of another's conversation
        return f"{KEY}{tenant}:{knowledge_base}:{conversation_id}"

    async def history(
        self, tenant: str, knowledge_base: str, conversation_id: str
    ) -> list[inference_pb2.ChatMessage]:
        """The conversation so far, oldest first ([] for a new or expired one)."""
        key = self._key(tenant, knowledge_base, conversation_id)
        raw: list[bytes] = await self._redis.lrange(key, 0, -1)  # type: ignore[misc]
        return [inference_pb2.ChatMessage(**json.loads(item)) for item in raw]

    async def append(
        self,
        tenant: str,
        knowledge_base: str,
        conversation_id: str,
        *messages: inference_pb2.ChatMessage,
    ) -> None:
        key = self._key(tenant, knowledge_base, conversation_id)
        items = [json.dumps({"role": m.role, "content": m.content}) for m in messages]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *items)
            pipe.ltrim(key, -MAX_MESSAGES, -1)
            pipe.expire(key, TTL_S)
            await pipe.execute()
