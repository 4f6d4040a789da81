"""`--cluster`'s servers, real, on free ports: a three-node NATS cluster keeps every
accepted message when the node a client is connected to is killed, and Redis through
Sentinel keeps its data and takes writes again when the primary is killed (issue 22)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from llmos import subjects
from llmos.config import HostPort, Secret
from llmos.hotstate import connect_redis, service_redis_url, sync_redis_client
from llmos.messaging import connect_nats
from llmos.trust import SETUP_USER
from tools.devstack.cluster import (
    NatsCluster,
    RedisReplicated,
    sentinel_client,
    start_nats_cluster,
    start_redis_replicated,
)
from tools.harness import eventually_async

#: what each half of the test publishes
HALF = 100


@pytest.fixture(scope="module")
def nats_cluster(
    tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path
) -> Iterator[NatsCluster]:
    """Three clustered nats-servers, the streams on all three."""
    cluster = start_nats_cluster(tmp_path_factory.mktemp("nats-cluster"), secrets_dir=secrets_dir)
    try:
        yield cluster
    finally:
        cluster.stop(5)


@pytest.fixture(scope="module")
def redis_ha(
    tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path
) -> Iterator[RedisReplicated]:
    """A primary, its replica and three Sentinels quick to declare it down."""
    cluster = start_redis_replicated(
        tmp_path_factory.mktemp("redis-ha"),
        secrets_dir=secrets_dir,
        down_after_ms=1000,
        failover_timeout_ms=3000,
    )
    try:
        yield cluster
    finally:
        cluster.stop(5)


async def publish_until_acked(nc: NATS, subject: str, number: int) -> None:
    """Publish message `number`, again until the stream acknowledges it: what a service's
    publisher does across a failover (the message id makes a repeat count once)."""
    js = nc.jetstream()
    while True:
        try:
            await js.publish(
                subject,
                f"work {number}".encode(),
                timeout=2,
                headers={"Nats-Msg-Id": f"{subject}-{number}"},
            )
            return
        except (NatsTimeoutError, NoStreamResponseError, ServiceUnavailableError, ConnectionError):
            await asyncio.sleep(0.2)


async def test_streams_are_kept_on_all_three_nodes(nats_cluster: NatsCluster) -> None:
    setup = nats_cluster.nodes[0].credentials(SETUP_USER)
    nc = await connect_nats(nats_cluster.public_url, "test", 10, setup)
    try:
        for stream in (subjects.EVENTS_STREAM, subjects.AUDIT_STREAM, subjects.WITNESS_STREAM):
            info = await nc.jetstream().stream_info(stream)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()


async def test_no_accepted_work_is_lost_when_the_connected_node_is_killed(
    nats_cluster: NatsCluster,
) -> None:
    setup = nats_cluster.nodes[0].credentials(SETUP_USER)
    nc = await connect_nats(nats_cluster.public_url, "test", 10, setup)
    subject = f"llmos.events.test.{uuid.uuid4().hex}"
    try:
        js = nc.jetstream()
        consumer = await js.pull_subscribe(subject, durable=f"test-{uuid.uuid4().hex[:8]}")
        for number in range(HALF):
            await publish_until_acked(nc, subject, number)
        consumed: set[bytes] = set()
        while len(consumed) < HALF // 2:  # half of it taken and acknowledged before the loss
            for message in await consumer.fetch(10, timeout=5):
                consumed.add(message.data)
                await message.ack_sync()

        assert nc.connected_url is not None
        lost = next(n for n in nats_cluster.nodes if n.port == nc.connected_url.port)
        lost.proc.kill()
        lost.proc.wait()

        for number in range(HALF, 2 * HALF):
            await publish_until_acked(nc, subject, number)
        assert nc.is_connected and nc.connected_url is not None
        assert nc.connected_url.port != lost.port

        async def drained() -> int | None:
            # as the audit service's fetch loop does: while the stream or the consumer
            # elects a new leader, JetStream answers 503
            with contextlib.suppress(NatsTimeoutError, ServiceUnavailableError):
                for message in await consumer.fetch(50, timeout=2):
                    consumed.add(message.data)
                    await message.ack_sync()
            return len(consumed) if len(consumed) >= 2 * HALF else None

        count: int = await eventually_async(drained, 60, what="every accepted message consumed")
        assert count == 2 * HALF
        assert consumed == {f"work {n}".encode() for n in range(2 * HALF)}
    finally:
        await nc.close()


async def test_redis_through_sentinel_survives_the_primary_being_killed(
    redis_ha: RedisReplicated, secrets_dir: Path
) -> None:
    url = service_redis_url(Secret(redis_ha.public_url), secrets_dir, "scheduler")
    sentinels = tuple(HostPort(s.host, s.port) for s in redis_ha.sentinels)
    client = await connect_redis(url, 10, sentinels, redis_ha.master)
    blocking = sync_redis_client(url, sentinels, redis_ha.master)  # the gateway's kind
    try:
        key = f"llmos:sched:cluster-test:{uuid.uuid4().hex}"
        await client.set(key, "before")
        assert await asyncio.to_thread(blocking.get, key) == b"before"
        primary = redis.Redis.from_url(redis_ha.primary.url)
        with contextlib.closing(primary):
            assert primary.wait(1, 5000) == 1  # the replica holds it: then it is safe

        redis_ha.primary.proc.kill()
        redis_ha.primary.proc.wait()

        assert await client.get(key) == b"before"  # retried until a primary is named
        await client.set(key, "after")
        assert await client.get(key) == b"after"
        assert await asyncio.to_thread(blocking.get, key) == b"after"
        with contextlib.closing(sentinel_client(redis_ha.sentinels[0])) as sentinel:
            named = sentinel.sentinel_get_master_addr_by_name(  # type: ignore[no-untyped-call]
                redis_ha.master
            )
        assert int(named[1]) == redis_ha.replica.port
    finally:
        await client.aclose()
        blocking.close()
