"""Attacks from inside the network on a real storage service and a real nats-server:
forged, stale and misdirected tenant assertions, and one service's NATS credentials used
to read or write what belongs to another. Each is refused with a reason."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from nats.aio.client import Client as NATS

from llmos import subjects
from llmos.assertions import METADATA_KEY
from llmos.natsperms import inbox_prefix
from llmos.v1 import audit_pb2, common_pb2, scheduler_pb2, storage_pb2, storage_pb2_grpc
from llmos.workers import WorkerTable
from tests.integration.storage_client import StorageProcess, download, refused, upload
from tools.devstack.infra import NatsServer
from tools.harness import eventually_async
from tools.standin import Principal, internal_channel, sign_assertion

# -- tenant assertions ------------------------------------------------------------------


def _assertion(secrets: Path, **changes: Any) -> str:
    return sign_assertion(secrets, **{"scopes": frozenset({"admin"}), **changes})


def _as_gateway(storage: StorageProcess) -> storage_pb2_grpc.StorageStub:
    """Storage as the gateway's certificate reaches it, with no assertion of its own."""
    channel = internal_channel(
        storage.process.address, "storage", storage.process.secrets_dir, principal=None
    )
    return storage_pb2_grpc.StorageStub(channel)


def _list_with(stub: storage_pb2_grpc.StorageStub, token: str | None) -> Callable[[], Any]:
    metadata = [(METADATA_KEY, token)] if token is not None else None
    request = storage_pb2.ListDatasetsRequest(tenant="system")
    return lambda: stub.ListDatasets(request, metadata=metadata, timeout=10)


def test_an_assertion_that_verifies_is_accepted(storage: StorageProcess) -> None:
    stub = _as_gateway(storage)
    listed = _list_with(stub, _assertion(storage.process.secrets_dir))()
    assert list(listed.datasets) == []


def test_a_call_for_a_tenant_without_an_assertion_is_refused(storage: StorageProcess) -> None:
    refused(
        _list_with(_as_gateway(storage), None),
        grpc.StatusCode.UNAUTHENTICATED,
        "ListDatasets acts for a tenant: it needs the gateway's signed tenant assertion",
    )


def test_an_expired_assertion_is_refused(storage: StorageProcess) -> None:
    stale = _assertion(storage.process.secrets_dir, expires_at=time.time() - 60)
    refused(
        _list_with(_as_gateway(storage), stale),
        grpc.StatusCode.PERMISSION_DENIED,
        "the tenant assertion has expired",
    )


def test_an_assertion_meant_for_another_service_is_refused(storage: StorageProcess) -> None:
    elsewhere = _assertion(storage.process.secrets_dir, audience="scheduler")
    refused(
        _list_with(_as_gateway(storage), elsewhere),
        grpc.StatusCode.PERMISSION_DENIED,
        "the tenant assertion is meant for 'scheduler', not 'storage'",
    )


def test_an_assertion_with_a_tampered_tenant_is_refused(storage: StorageProcess) -> None:
    body, _, signature = _assertion(storage.process.secrets_dir).partition(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["tenant"] = "system"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    refused(
        _list_with(_as_gateway(storage), f"{forged}.{signature}"),
        grpc.StatusCode.UNAUTHENTICATED,
        "the tenant assertion's signature does not verify",
    )


def test_an_assertion_signed_by_another_key_is_refused(
    storage: StorageProcess, tmp_path: Path
) -> None:
    refused(
        _list_with(_as_gateway(storage), _assertion(tmp_path)),
        grpc.StatusCode.UNAUTHENTICATED,
        "the tenant assertion's signature does not verify",
    )


def test_the_asserted_tenant_wins_over_the_tenant_field(storage: StorageProcess) -> None:
    """A request naming another tenant acts on the asserted one: acme cannot read a
    victim's blob by writing `tenant: victim`."""
    secrets = storage.process.secrets_dir
    address = storage.process.address
    victim = storage_pb2_grpc.StorageStub(
        internal_channel(address, "storage", secrets, principal=Principal("v", "victim"))
    )
    blob = upload(victim, "victim", b"the victim's secret weights")
    assert download(victim, "victim", blob.sha256) == b"the victim's secret weights"

    request = storage_pb2.DownloadBlobRequest(tenant="victim", sha256=blob.sha256)
    as_acme = [(METADATA_KEY, _assertion(secrets, tenant="acme", principal="mallory"))]
    plain = _as_gateway(storage)
    refused(
        lambda: b"".join(c.data for c in plain.DownloadBlob(request, metadata=as_acme)),
        grpc.StatusCode.NOT_FOUND,
        f"blob {blob.sha256} does not exist",
    )


# -- NATS: one service's credentials used for another's subjects ---------------------------

#: a worker's NATS user: its slot (each running worker holds one of its own)
WORKER = "inference-worker-1"


class Violations:
    """A connection as one service user, and the permission errors the server sent it."""

    def __init__(self, server: NatsServer, user: str) -> None:
        self._server = server
        self._user = user
        self.errors: list[str] = []
        self.nc: NATS | None = None

    async def __aenter__(self) -> Violations:
        creds = self._server.credentials(self._user)

        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            self._server.public_url,
            user=creds.user,
            password=creds.password.reveal(),
            inbox_prefix=inbox_prefix(creds.user),
            error_cb=on_error,
            allow_reconnect=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.nc is not None
        await self.nc.close()

    async def refused(self, what: str) -> None:
        """Wait for the server's permissions violation naming `what`."""
        await eventually_async(
            lambda: any(
                "permissions violation" in e.lower() and what.lower() in e.lower()
                for e in self.errors
            ),
            5,
            what=f"a permissions violation for {what!r}",
        )


async def _setup(server: NatsServer) -> NATS:
    return await nats.connect(server.url)


async def test_a_worker_cannot_read_other_replies(nats_server: NatsServer) -> None:
    """Every answer goes to a private inbox: a worker subscribing to all inboxes, or to
    the gateway's, is refused and hears nothing."""
    async with Violations(nats_server, WORKER) as worker:
        assert worker.nc is not None
        heard: list[bytes] = []

        async def on_message(msg: Any) -> None:
            heard.append(msg.data)

        for wildcard in ("_INBOX.>", f"{inbox_prefix('gateway')}.>"):
            await worker.nc.subscribe(wildcard, cb=on_message)
            await worker.refused(wildcard.lower())
        setup = await _setup(nats_server)
        await setup.publish(f"{inbox_prefix('gateway')}.abc", b"a tenant's answer")
        await setup.publish("_INBOX.abc", b"another answer")
        await setup.flush()
        await setup.close()
        await asyncio.sleep(0.5)
        assert heard == []


async def test_a_worker_cannot_take_another_workers_or_services_work(
    nats_server: NatsServer,
) -> None:
    async with Violations(nats_server, WORKER) as worker:
        assert worker.nc is not None
        for subject in (
            subjects.worker_generate("inference-worker-2-0a1b2c3d4e5f"),
            subjects.trainer_assign("trainer-1-0a1b2c3d4e5f"),
            subjects.ALL_JOB_REPORTS,
        ):
            await worker.nc.subscribe(subject)
            await worker.refused(subject)


async def test_a_worker_cannot_publish_an_audit_record_as_the_gateway(
    nats_server: NatsServer,
) -> None:
    setup = await _setup(nats_server)
    seen: list[bytes] = []

    async def on_record(msg: Any) -> None:
        seen.append(msg.data)

    await setup.subscribe(subjects.audit("gateway"), cb=on_record)
    await setup.flush()
    forged = audit_pb2.AuditRecord(id="forged", source="gateway", action="admin.grant")
    async with Violations(nats_server, WORKER) as worker:
        assert worker.nc is not None
        await worker.nc.publish(subjects.audit("gateway"), forged.SerializeToString())
        await worker.refused(subjects.audit("gateway"))
    await asyncio.sleep(0.3)
    await setup.close()
    assert seen == []


async def test_a_worker_cannot_heartbeat_as_another_instance(nats_server: NatsServer) -> None:
    async with Violations(nats_server, WORKER) as worker:
        assert worker.nc is not None
        for subject in (
            subjects.heartbeat("inference-worker", "inference-worker-2-0a1b2c3d4e5f"),
            subjects.heartbeat("trainer", "trainer-1-0a1b2c3d4e5f"),
        ):
            await worker.nc.publish(subject, b"")
            await worker.refused(subject)


async def test_a_heartbeat_whose_subject_names_another_instance_is_ignored(
    nats_server: NatsServer,
) -> None:
    """A worker publishing on its own subject a status that claims another instance's
    identity (and a huge capacity) does not enter the table the scheduler places by."""
    table = WorkerTable()
    scheduler = await nats.connect(
        nats_server.public_url,
        user="scheduler",
        password=nats_server.credentials("scheduler").password.reveal(),
        inbox_prefix=inbox_prefix("scheduler"),
    )
    following = await table.follow(scheduler)
    await scheduler.flush()

    def status(instance_id: str) -> bytes:
        claimed = scheduler_pb2.WorkerStatus(
            instance=common_pb2.ServiceInstance(
                service="inference-worker", instance_id=instance_id, address="127.0.0.1:1"
            )
        )
        claimed.capacity.memory_bytes = 1 << 50
        return claimed.SerializeToString()

    try:
        async with Violations(nats_server, WORKER) as worker:
            assert worker.nc is not None
            mine, victim = "inference-worker-1-0a1b2c3d4e5f", "inference-worker-2-0a1b2c3d4e5f"
            own = subjects.heartbeat("inference-worker", mine)
            await worker.nc.publish(own, status(victim))
            await worker.nc.publish(own, status(mine))
            await worker.nc.flush()
        await eventually_async(lambda: table.address(mine), 5, what="the honest heartbeat")
        assert table.address(victim) == ""
    finally:
        await following.unsubscribe()
        await scheduler.close()


@pytest.mark.parametrize(
    "user", ["gateway", "scheduler", "storage", "audit", "inference-worker-1", "trainer-1"]
)
async def test_no_service_may_purge_or_delete_a_stream(own_nats: NatsServer, user: str) -> None:
    setup = await _setup(own_nats)
    js = setup.jetstream()
    await js.publish(subjects.job_event("j-1"), b"kept")
    async with Violations(own_nats, user) as service:
        assert service.nc is not None
        for attempt in (
            service.nc.jetstream().purge_stream(subjects.EVENTS_STREAM),
            service.nc.jetstream().delete_stream(subjects.EVENTS_STREAM),
        ):
            with pytest.raises(Exception):  # noqa: B017 - the server never answers it
                await asyncio.wait_for(attempt, 2)
        await service.refused(f"$JS.API.STREAM.PURGE.{subjects.EVENTS_STREAM}")
    info = await js.stream_info(subjects.EVENTS_STREAM)
    assert info.state.messages == 1
    await js.purge_stream(subjects.EVENTS_STREAM)  # the setup identity may
    assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == 0
    await setup.close()
