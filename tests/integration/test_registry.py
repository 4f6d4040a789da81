"""The service registry in real Redis: live instances appear, dead ones expire."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from llmos.registry import ServiceRegistry, alive_key, info_key
from llmos.services import SERVICE_MODULES
from llmos.v1 import common_pb2
from tools.devstack.infra import RedisServer


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis_client = aioredis.Redis.from_url(redis_server.url)
    keys = [k for s in SERVICE_MODULES for k in (alive_key(s), info_key(s))]
    await redis_client.delete(*keys)
    try:
        yield redis_client
    finally:
        await redis_client.delete(*keys)
        await redis_client.aclose()


def _instance(service: str) -> common_pb2.ServiceInstance:
    return common_pb2.ServiceInstance(
        service=service, instance_id=f"{service}-{uuid.uuid4().hex[:6]}", address="h:1"
    )


async def test_heartbeating_instances_are_listed(client: aioredis.Redis) -> None:
    registry = ServiceRegistry(client, ttl_s=5)
    gateway, audit = _instance("gateway"), _instance("audit")
    await registry.heartbeat(gateway)
    await registry.heartbeat(audit)
    listed = await registry.live_instances()
    assert [i.instance_id for i in listed] == [audit.instance_id, gateway.instance_id]
    assert listed[1].address == "h:1"


async def test_an_instance_that_stops_heartbeating_drops_out(client: aioredis.Redis) -> None:
    registry = ServiceRegistry(client, ttl_s=0.3)
    crashed = _instance("scheduler")
    await registry.heartbeat(crashed)
    assert len(await registry.live_instances()) == 1
    await asyncio.sleep(0.5)
    assert await registry.live_instances() == []
    assert not await client.exists(info_key("scheduler"))  # no garbage is left behind


async def test_deregister_removes_at_once(client: aioredis.Redis) -> None:
    registry = ServiceRegistry(client, ttl_s=30)
    instance = _instance("storage")
    await registry.heartbeat(instance)
    await registry.deregister(instance)
    assert await registry.live_instances() == []


async def test_a_restarted_process_supersedes_the_crashed_one_at_its_address(
    client: aioredis.Redis,
) -> None:
    registry = ServiceRegistry(client, ttl_s=30)
    crashed, restarted, other = _instance("scheduler"), _instance("scheduler"), _instance("audit")
    other.address = "h:2"
    await registry.register(crashed)
    await registry.register(other)
    await registry.register(restarted)
    listed = {i.instance_id for i in await registry.live_instances()}
    assert listed == {restarted.instance_id, other.instance_id}
