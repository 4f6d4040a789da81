"""The service registry in Redis: which service instances are alive and where.

Each instance heartbeats an expiry into its own service's sorted set; an instance that
stops heartbeating (crashed, partitioned) drops out after its TTL with no one cleaning up.
Each service's registrations live under its own keys (`llmos:services:<service>:...`),
which only that service's Redis user may write (llmos/redis_acl.py): no process can
announce an instance of a service it is not. Every service user reads them all.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from llmos.redis_acl import REGISTRY_PREFIX
from llmos.services import SERVICE_MODULES
from llmos.v1 import common_pb2


def alive_key(service: str) -> str:
    """zset: instance_id -> expiry (unix ms), of `service`'s instances."""
    return f"{REGISTRY_PREFIX}{service}:alive"


def info_key(service: str) -> str:
    """hash: instance_id -> ServiceInstance bytes, of `service`'s instances."""
    return f"{REGISTRY_PREFIX}{service}:info"


class ServiceRegistry:
    """Registers this process's instance and lists the live ones."""

    def __init__(self, client: aioredis.Redis, ttl_s: float) -> None:
        self._redis = client
        self._ttl_ms = int(ttl_s * 1000)

    async def register(self, instance: common_pb2.ServiceInstance) -> None:
        """First heartbeat of a new process. It drops its service's expired entries (only
        its own service's user may), and supersedes any crashed instance of its service
        that held the same address (a restarted process reuses its port, and the old entry
        would otherwise borrow the new process's health until its TTL ran out)."""
        alive, info = alive_key(instance.service), info_key(instance.service)
        now_ms = int(time.time() * 1000)
        stale = [i.decode() for i in await self._redis.zrangebyscore(alive, "-inf", now_ms)]
        stale += [
            other.instance_id
            for other in await self._live(instance.service)
            if other.address == instance.address and other.instance_id != instance.instance_id
        ]
        if stale:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(alive, *stale)
                pipe.hdel(info, *stale)
                await pipe.execute()
        await self.heartbeat(instance)

    async def heartbeat(self, instance: common_pb2.ServiceInstance) -> None:
        """Announce (or re-announce) that `instance` is alive for another TTL."""
        if instance.service not in SERVICE_MODULES:
            raise ValueError(f"{instance.service!r} is not an LLM OS service")
        alive, info = alive_key(instance.service), info_key(instance.service)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(info, mapping={instance.instance_id: instance.SerializeToString()})
            pipe.zadd(alive, {instance.instance_id: int(time.time() * 1000) + self._ttl_ms})
            # a service whose every instance is gone leaves nothing behind
            pipe.pexpire(alive, self._ttl_ms)
            pipe.pexpire(info, self._ttl_ms)
            await pipe.execute()

    async def deregister(self, instance: common_pb2.ServiceInstance) -> None:
        """Remove an instance at clean shutdown."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(alive_key(instance.service), instance.instance_id)
            pipe.hdel(info_key(instance.service), instance.instance_id)
            await pipe.execute()

    async def live_instances(self) -> list[common_pb2.ServiceInstance]:
        """Instances of every service whose heartbeat has not expired, ordered by service
        (one round trip, whatever the number of services)."""
        return await self._live(*SERVICE_MODULES)

    async def _live(self, *services: str) -> list[common_pb2.ServiceInstance]:
        now_ms = int(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            for service in services:
                pipe.zrangebyscore(alive_key(service), now_ms, "+inf")
                # stale fields are few: each process start prunes its service's
                pipe.hgetall(info_key(service))
            replies = await pipe.execute()
        instances: list[common_pb2.ServiceInstance] = []
        for ids, blobs in zip(replies[::2], replies[1::2], strict=True):
            instances.extend(
                common_pb2.ServiceInstance.FromString(blobs[i]) for i in ids if i in blobs
            )
        return sorted(instances, key=lambda i: (i.service, i.started_at.seconds, i.instance_id))
