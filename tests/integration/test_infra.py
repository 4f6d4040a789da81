"""The real NATS (JetStream) and Redis the project starts, and the streams it declares."""

from __future__ import annotations

import asyncio

import nats
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError

from llmos import subjects
from llmos.events import Phase, service_lifecycle
from llmos.messaging import EventPublisher, ensure_streams
from llmos.v1 import common_pb2, events_pb2
from tools.devstack.infra import NatsServer, RedisServer


async def test_jetstream_streams_are_declared_idempotently(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await ensure_streams(js)  # a second service starting must not fail
        names = {info.config.name for info in await js.streams_info()}
        assert {subjects.EVENTS_STREAM, subjects.AUDIT_STREAM} <= names
    finally:
        await nc.close()


async def test_published_event_is_stored_once_even_if_retried(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        instance = common_pb2.ServiceInstance(service="audit", instance_id="audit-dup")
        event = service_lifecycle(instance, Phase.PHASE_STARTED)
        subject = subjects.service_lifecycle("audit", "started")
        publisher = EventPublisher(js)
        before = (await js.stream_info(subjects.EVENTS_STREAM)).state.messages
        await publisher.publish(subject, event)
        await publisher.publish(subject, event)  # a retry after a lost ack
        after = (await js.stream_info(subjects.EVENTS_STREAM)).state.messages
        assert after - before == 1
        stored = await js.get_last_msg(subjects.EVENTS_STREAM, subject)
        assert stored.data is not None
        assert events_pb2.Event.FromString(stored.data).id == event.id
    finally:
        await nc.close()


async def test_nats_refuses_clients_without_the_token(nats_server: NatsServer) -> None:
    async def ignore(_: Exception) -> None:
        return None

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await asyncio.wait_for(
            nats.connect(
                nats_server.public_url, allow_reconnect=False, connect_timeout=2, error_cb=ignore
            ),
            timeout=20,
        )


async def test_redis_requires_the_generated_password(redis_server: RedisServer) -> None:
    anonymous = aioredis.Redis.from_url(redis_server.public_url)
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            await anonymous.set("k", "v")
    finally:
        await anonymous.aclose()
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.set("llmos:test:k", "v")
    finally:
        await client.aclose()
