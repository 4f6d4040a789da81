"""An audit service for tests and what its tests share: its environment, reading its
records and verdicts, publishing records through the real publisher."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats

from llmos.auditing import AuditPublisher, new_record
from llmos.v1 import audit_pb2, audit_pb2_grpc
from tests.integration.conftest import gateway_env
from tools.devstack.infra import NatsServer, RedisServer
from tools.harness import Process, eventually, eventually_async


def audit_env(server: NatsServer, redis: RedisServer, data: Path, **extra: str) -> dict[str, str]:
    return {
        **gateway_env(server, redis),
        "LLMOS_DATA_DIR": str(data),
        "LLMOS_AUDIT_ACK_WAIT_S": "2",
        "LLMOS_AUDIT_CHECKPOINT_RECORDS": "1000",
        "LLMOS_AUDIT_CHECKPOINT_S": "0.5",
        **extra,
    }


def stub(service: Process) -> audit_pb2_grpc.AuditStub:
    return audit_pb2_grpc.AuditStub(service.channel())


def verify(service: Process) -> audit_pb2.VerifyAuditResponse:
    response: audit_pb2.VerifyAuditResponse = stub(service).VerifyAudit(
        audit_pb2.VerifyAuditRequest(), timeout=30
    )
    return response


def wait_for_records(service: Process, count: int, timeout_s: float = 90) -> None:
    eventually(
        lambda: verify(service).records_checked >= count,
        timeout_s,
        what=f"{count} records stored",
        interval=0.3,
    )


def all_records(service: Process, principal: str = "") -> list[audit_pb2.StoredAuditRecord]:
    request = audit_pb2.QueryAuditRequest(page_size=1000, principal=principal)
    found: list[audit_pb2.StoredAuditRecord] = []
    while True:
        page = stub(service).QueryAudit(request)
        found.extend(page.records)
        if not page.next_page_token:
            return found
        request.page_token = page.next_page_token


async def publish(url: str, records: list[audit_pb2.AuditRecord], pace_s: float = 0) -> int:
    """Publish through the real AuditPublisher, `pace_s` between bursts of 500."""
    nc = await nats.connect(url)
    publisher = AuditPublisher(nc.jetstream(), "test")
    publisher.start()
    for start in range(0, len(records), 500):
        for record in records[start : start + 500]:
            publisher.record(record)
        await asyncio.sleep(pace_s)
    await eventually_async(lambda: publisher.published >= len(records), 60, what="all published")
    await publisher.close()
    await nc.close()
    return publisher.published


def make_records(count: int, tenant: str = "lab-a") -> list[audit_pb2.AuditRecord]:
    records = []
    for n in range(count):
        record = new_record("test", "/llmos.v1.Gateway/Generate")
        record.tenant = tenant
        record.principal = f"user-{n % 7}"
        record.outcome = "OK"
        record.resource = f"model/m{n % 3}"
        records.append(record)
    return records


async def redeliver(url: str, records: list[audit_pb2.AuditRecord]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for record in records:  # no Nats-Msg-Id: JetStream stores them again
        await js.publish("llmos.audit.test", record.SerializeToString())
    await nc.close()


def standby_takes_over(url: str, first: Process, second: Process) -> list[audit_pb2.AuditRecord]:
    """200 records stored by the writer `first`, which is then killed with -9, and 100
    more published, which the standby `second` must store; every record published."""
    before, after = make_records(200), make_records(100)
    asyncio.run(publish(url, before))
    wait_for_records(first, len(before))
    first.kill()
    asyncio.run(publish(url, after))
    wait_for_records(second, len(before) + len(after))
    return before + after
