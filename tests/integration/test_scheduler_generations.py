"""The scheduler's generation adapter on real NATS: what the rules decide reaches the
gateway — the reply to a submission, and the error chunk that ends work nobody serves.
(The rules themselves are unit-tested in tests/unit/test_generations.py.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from llmos import subjects
from llmos.v1 import inference_pb2
from tests.integration.conftest import gateway_env
from tools.devstack.infra import NatsServer, RedisServer
from tools.harness import Process, eventually_async, start_service
from tools.standin import nats_login_as


@pytest.fixture(scope="module")
def scheduler(
    nats_server: NatsServer, own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """A scheduler still warming up (it queues work for models it has not seen a worker
    for) that gives up on a model nobody serves after one second."""
    data = tmp_path_factory.mktemp("scheduler")
    env = {
        **gateway_env(nats_server, own_redis),
        "LLMOS_DATA_DIR": str(data),
        "LLMOS_WORKER_WARMUP_S": "600",
        "LLMOS_UNSERVED_TIMEOUT_S": "1",
    }
    process = start_service("services.scheduler", env, Path(data))
    try:
        yield process
    finally:
        process.stop()


async def test_work_nobody_serves_is_queued_then_ended_with_unavailable(
    scheduler: Process, nats_server: NatsServer
) -> None:
    # as the gateway: the scheduler may answer only into the gateway's private inboxes
    nc = await nats.connect(
        nats_server.public_url, **nats_login_as(nats_server.secrets_dir, "gateway")
    )
    chunks: list[inference_pb2.GenerateChunk] = []

    async def on_chunk(msg: Msg) -> None:
        chunks.append(inference_pb2.GenerateChunk.FromString(msg.data))

    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=on_chunk)
    work = inference_pb2.GenerateWork(
        request_id=uuid.uuid4().hex, tenant="lab-a", model="ghost", prompt="hi", reply_to=inbox
    )
    try:
        answer = await nc.request(
            subjects.SCHEDULE_GENERATE,
            inference_pb2.ScheduledGenerate(work=work, cost=10).SerializeToString(),
            timeout=10,
        )
        reply = inference_pb2.ScheduleReply.FromString(answer.data)
        assert not reply.HasField("error")
        assert reply.queued == 1 and reply.scheduler.startswith("scheduler-")
        await eventually_async(lambda: chunks, 15, what="the generation ended")
        await asyncio.sleep(0.5)  # nothing else follows the end
    finally:
        await nc.close()
    (end,) = chunks
    assert end.request_id == work.request_id and end.done
    assert end.finish_reason == "error" and end.error.code == "UNAVAILABLE"
    assert end.error.message == "no worker has served model 'ghost' for 1s; retry later"
