"""Response cache in Redis for deterministic requests (greedy generation, embeddings,
classification): the same model and input give the same answer, so a repeat is served
without touching a worker. Keys start with the tenant, so tenants never share entries.

The key covers the request kind, the served model name and the request message
serialized deterministically. A deployed version is served under a name of its own
(`<tenant>--<model>-v<version>`, `gateway.deployments`), so a new version never answers
from an older one's entries; a model served under its plain name is taken to keep its
weights for the life of an entry (`LLMOS_CACHE_TTL_S`).
"""

from __future__ import annotations

import hashlib
from typing import TypeVar

import redis.asyncio as aioredis
from google.protobuf.message import Message

PREFIX = "llmos:cache:"
#: Answers bigger than this are not worth a Redis round trip.
MAX_ENTRY_BYTES = 1024 * 1024

M = TypeVar("M", bound=Message)


class ResponseCache:
    """Tenant-scoped cache of serialized answers."""

    def __init__(self, redis: aioredis.Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    @property
    def enabled(self) -> bool:
        return self._ttl_s > 0

    @staticmethod
    def key(tenant: str, kind: str, model: str, request: Message) -> str:
        digest = hashlib.sha256()
        for part in (kind, model):
            digest.update(part.encode() + b"\0")
        digest.update(request.SerializeToString(deterministic=True))
        return f"{PREFIX}{tenant}:{digest.hexdigest()}"

    async def get(self, key: str, answer_type: type[M]) -> M | None:
        if not self.enabled:
            return None
        raw = await self._redis.get(key)
        return answer_type.FromString(raw) if raw is not None else None

    async def put(self, key: str, answer: Message) -> None:
        data = answer.SerializeToString()
        if self.enabled and len(data) <= MAX_ENTRY_BYTES:
            await self._redis.set(key, data, ex=self._ttl_s)
