"""The service registry in Redis: which service instances are alive and where.

Each instance heartbeats an expiry into a sorted set; an instance that stops
heartbeating (crashed, partitioned) drops out after its TTL with no one cleaning up.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from llmos.v1 import common_pb2

ALIVE_KEY = "llmos:services:alive"  # zset: instance_id -> expiry (unix ms)
INFO_KEY = "llmos:services:info"  # hash: instance_id -> ServiceInstance bytes


class ServiceRegistry:
    """Registers this process's instance and lists the live ones."""

    def __init__(self, client: aioredis.Redis, ttl_s: float) -> None:
        self._redis = client
        self._ttl_ms = int(ttl_s * 1000)

    async def register(self, instance: common_pb2.ServiceInstance) -> None:
        """First heartbeat of a new process; it supersedes any crashed instance that held the
        same address (a restarted process reuses its port, and the old entry would otherwise
        borrow the new process's health until its TTL ran out)."""
        for other in await self.live_instances():
            if other.address == instance.address and other.instance_id != instance.instance_id:
                await self.deregister(other.instance_id)
        await self.heartbeat(instance)

    async def heartbeat(self, instance: common_pb2.ServiceInstance) -> None:
        """Announce (or re-announce) that `instance` is alive for another TTL."""
        expiry = int(time.time() * 1000) + self._ttl_ms
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(INFO_KEY, mapping={instance.instance_id: instance.SerializeToString()})
            pipe.zadd(ALIVE_KEY, {instance.instance_id: expiry})
            await pipe.execute()

    async def deregister(self, instance_id: str) -> None:
        """Remove an instance at clean shutdown."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(ALIVE_KEY, instance_id)
            pipe.hdel(INFO_KEY, instance_id)
            await pipe.execute()

    async def live_instances(self) -> list[common_pb2.ServiceInstance]:
        """Instances whose heartbeat has not expired, ordered by service name."""
        now_ms = int(time.time() * 1000)
        expired = await self._redis.zrangebyscore(ALIVE_KEY, "-inf", now_ms)
        if expired:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(ALIVE_KEY, "-inf", now_ms)
                pipe.hdel(INFO_KEY, *expired)
                await pipe.execute()
        ids = await self._redis.zrangebyscore(ALIVE_KEY, now_ms, "+inf")
        if not ids:
            return []
        blobs: list[bytes | None] = await self._redis.hmget(INFO_KEY, ids)  # type: ignore[misc]
        instances = []
        for blob in blobs:
            if blob is not None:
                instances.append(common_pb2.ServiceInstance.FromString(blob))
        return sorted(instances, key=lambda i: (i.service, i.started_at.seconds, i.instance_id))
