"""Redis, the shared hot state (registry, leases, counters): connecting with patience."""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmos.config import Secret
from llmos.errors import Unavailable

log = logging.getLogger("llmos.hotstate")


async def connect_redis(url: Secret[str], timeout_s: float) -> aioredis.Redis:
    """Connect and PING, retrying until `timeout_s`; the URL (with any password) is never logged."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url.reveal(), socket_connect_timeout=2, health_check_interval=10
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.ping()  # type: ignore[misc]  # redis-py types sync|async
            return client
        except (RedisError, OSError) as exc:
            if time.monotonic() >= deadline:
                await client.aclose()
                raise Unavailable(f"cannot reach Redis within {timeout_s:g}s") from exc
            log.info("waiting for Redis")
            await asyncio.sleep(0.5)
