"""Each of the six services, as its own process against real NATS and Redis: announces
itself, answers health and reflection, registers, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc
import nats
import pytest
import redis.asyncio as aioredis
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from nats.aio.msg import Msg

from llmos.health import NOT_SERVING, SERVING, UNREACHABLE, check_health
from llmos.identity import operator_identity
from llmos.registry import ServiceRegistry
from llmos.services import SERVICE_MODULES
from llmos.v1 import events_pb2
from tools.devstack.infra import NatsServer, RedisServer, start_redis
from tools.harness import eventually_async, secrets_dir_of, start_process
from tools.standin import internal_channel

Phase = events_pb2.ServiceLifecycle.Phase


async def _next_event(queue: asyncio.Queue[events_pb2.Event], phase: int) -> events_pb2.Event:
    while True:
        event = await asyncio.wait_for(queue.get(), timeout=30)
        if event.service_lifecycle.phase == phase:
            return event


@pytest.mark.parametrize("service", list(SERVICE_MODULES))
async def test_service_lifecycle(
    service: str,
    service_env: dict[str, str],
    nats_server: NatsServer,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    nc = await nats.connect(nats_server.url)
    redis_client = aioredis.Redis.from_url(redis_server.url)
    events: asyncio.Queue[events_pb2.Event] = asyncio.Queue()

    async def on_event(msg: Msg) -> None:
        await events.put(events_pb2.Event.FromString(msg.data))

    await nc.subscribe(f"llmos.events.service.{service}.>", cb=on_event)
    process = start_process(
        service, [sys.executable, "-m", SERVICE_MODULES[service]], service_env, tmp_path
    )
    try:
        started = await _next_event(events, Phase.PHASE_STARTED)
        instance = started.service_lifecycle.instance
        assert instance.service == service
        assert instance.pid == process.pid
        address = instance.address

        # internal ports speak mutual TLS only: the check comes with an operator identity
        secrets = secrets_dir_of(service_env)
        internal = service != "gateway"
        operator = operator_identity(secrets, "lifecycle-test") if internal else None
        assert await check_health(address, identity=operator, server=service) == (SERVING, "")
        channel = (
            internal_channel(address, service, secrets, caller="operator", principal=None)
            if internal
            else grpc.insecure_channel(address)
        )
        reflected = ProtoReflectionDescriptorDatabase(channel)
        assert "grpc.health.v1.Health" in reflected.get_services()
        registered = await ServiceRegistry(redis_client, ttl_s=5).live_instances()
        assert instance.instance_id in {i.instance_id for i in registered}

        process.signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.proc.wait, 30) == 0
        stopped = await _next_event(events, Phase.PHASE_STOPPED)
        assert stopped.service_lifecycle.instance.instance_id == instance.instance_id
        assert stopped.service_lifecycle.reason == "SIGTERM"
        gone = await check_health(address, timeout_s=1, identity=operator, server=service)
        assert gone[0] == UNREACHABLE
        registered = await ServiceRegistry(redis_client, ttl_s=5).live_instances()
        assert instance.instance_id not in {i.instance_id for i in registered}
        said = process.log_path.read_text()
        assert "Traceback" not in said, said[said.index("Traceback") - 500 :][:4000]
    finally:
        process.stop()
        await nc.close()
        await redis_client.aclose()


async def test_health_tells_the_truth_while_redis_is_gone(
    service_env: dict[str, str], nats_server: NatsServer, tmp_path: Path
) -> None:
    """A service that loses Redis answers NOT_SERVING with the reason, and SERVING again
    once Redis is back (same address, as after a restart)."""
    secrets = secrets_dir_of(service_env)
    redis_dir = tmp_path / "own-redis"
    redis = start_redis(redis_dir, secrets_dir=secrets)
    env = {**service_env, "LLMOS_REDIS_URL": redis.public_url}
    nc = await nats.connect(nats_server.url)
    started: asyncio.Queue[events_pb2.Event] = asyncio.Queue()

    async def on_event(msg: Msg) -> None:
        await started.put(events_pb2.Event.FromString(msg.data))

    await nc.subscribe("llmos.events.service.storage.>", cb=on_event)
    process = start_process(
        "storage", [sys.executable, "-m", SERVICE_MODULES["storage"]], env, tmp_path
    )
    operator = operator_identity(secrets, "health-test")
    try:
        event = await _next_event(started, Phase.PHASE_STARTED)
        address = event.service_lifecycle.instance.address

        async def health(wanted: str) -> tuple[str, str]:
            async def answer() -> tuple[str, str] | None:
                found = await check_health(address, identity=operator, server="storage")
                return found if found[0] == wanted else None

            said: tuple[str, str] = await eventually_async(answer, what=wanted)
            return said

        assert await health(SERVING) == (SERVING, "")
        redis.stop(5)
        _, detail = await health(NOT_SERVING)
        assert detail.endswith("reports NOT_SERVING: lost Redis"), detail
        redis = start_redis(redis_dir, port=redis.port, secrets_dir=secrets)
        assert await health(SERVING) == (SERVING, "")
        assert process.proc.poll() is None  # it waited for Redis; it did not die
    finally:
        process.stop()
        redis.stop(5)
        await nc.close()
