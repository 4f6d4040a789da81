"""Attacks on the inside of a running stack, as someone on the same network would try
them: every internal gRPC port refuses a caller without a certificate of the internal CA,
and a caller with a valid certificate may call only what the caller table gives its
service (the refusal says why, and is audited)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmos.identity import channel_options
from llmos.trust import read_credentials
from llmos.v1 import audit_pb2, storage_pb2, storage_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.e2e.conftest import RunningStack
from tools.harness import eventually_async
from tools.standin import Principal, identity_for, internal_channel

INTERNAL = ("storage", "audit", "scheduler", "trainer", "inference-worker")


def _secrets(stack: RunningStack) -> Path:
    return stack.data_dir / "secrets"


def _health(channel: grpc.Channel) -> Any:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


@pytest.mark.parametrize("service", INTERNAL)
def test_a_plaintext_call_to_an_internal_service_is_refused(
    stack: RunningStack, service: str
) -> None:
    with (
        grpc.insecure_channel(stack.fields[service]) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        _health(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def _presenting(
    stack: RunningStack, service: str, material: tuple[bytes, bytes] | None
) -> grpc.Channel:
    """A channel that trusts the real internal CA and presents `material` (key, cert)."""
    real_ca = (_secrets(stack) / "ca" / "ca.pem").read_bytes()
    key, cert = material or (None, None)
    credentials = grpc.ssl_channel_credentials(real_ca, key, cert)
    return grpc.secure_channel(stack.fields[service], credentials, channel_options(service))


@pytest.mark.parametrize("service", INTERNAL)
def test_a_certificate_of_another_ca_is_refused(
    stack: RunningStack, service: str, tmp_path: Path
) -> None:
    """A self-made CA issuing itself a `gateway` certificate gets nowhere."""
    forged = identity_for(tmp_path / "forged", "gateway").material
    channel = _presenting(stack, service, (forged.key, forged.cert))
    with channel, pytest.raises(grpc.RpcError) as refused:
        _health(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("service", INTERNAL)
def test_tls_without_a_client_certificate_is_refused(stack: RunningStack, service: str) -> None:
    channel = _presenting(stack, service, None)
    with channel, pytest.raises(grpc.RpcError) as refused:
        _health(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("service", INTERNAL)
def test_health_answers_an_operator_certificate_of_the_internal_ca(
    stack: RunningStack, service: str
) -> None:
    """The launcher and `llmos status` check health with an identity of their own."""
    address = stack.fields[service]
    with internal_channel(address, service, _secrets(stack), caller="operator") as channel:
        assert _health(channel).status == health_pb2.HealthCheckResponse.SERVING


def test_a_server_must_prove_it_is_the_service_the_client_looked_for(stack: RunningStack) -> None:
    """A registry entry pointing `storage` at a worker's port would be refused by the
    client: the worker's certificate does not name storage."""
    worker = stack.fields["inference-worker"]
    posing = internal_channel(worker, "storage", _secrets(stack))
    with posing as channel, pytest.raises(grpc.RpcError) as refused:
        _health(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def _backup_as_a_worker(stack: RunningStack) -> grpc.RpcError:
    channel = internal_channel(
        stack.fields["storage"], "storage", _secrets(stack), caller="inference-worker"
    )
    with channel, pytest.raises(grpc.RpcError) as refused:
        storage_pb2_grpc.StorageStub(channel).BackupStorage(
            storage_pb2.BackupStorageRequest(path="/tmp/stolen"), timeout=10
        )
    return refused.value


async def _refusal_and_its_record(stack: RunningStack) -> tuple[grpc.RpcError, Any]:
    """Call as a worker while subscribed to storage's audit records (as the setup user)."""
    setup = read_credentials(_secrets(stack) / "nats" / "setup.json")
    nc = await nats.connect(stack.fields["nats"], user=setup.user, password=setup.password.reveal())
    seen: list[audit_pb2.AuditRecord] = []

    async def on_record(msg: Any) -> None:
        record = audit_pb2.AuditRecord.FromString(msg.data)
        if record.action == "/llmos.v1.Storage/BackupStorage":
            seen.append(record)

    try:
        await nc.subscribe("llmos.audit.storage", cb=on_record)
        await nc.flush()
        refusal = await asyncio.to_thread(_backup_as_a_worker, stack)
        await eventually_async(lambda: seen, 10, what="the refusal audited")
    finally:
        await nc.close()
    return refusal, seen[0]


def test_a_worker_certificate_cannot_back_up_storage(stack: RunningStack) -> None:
    """BackupStorage would copy every blob and the key-encryption keys: only the gateway,
    acting for a system admin, may ask for it; a worker's refusal is audited."""
    refusal, record = asyncio.run(_refusal_and_its_record(stack))
    assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refusal.details() == "inference-worker may not call BackupStorage"
    assert record.source == "storage" and record.outcome == "denied"
    assert record.principal.startswith("spiffe://llmos/inference-worker/")
    assert record.detail == "inference-worker may not call BackupStorage"
    assert not Path("/tmp/stolen").exists()


def test_the_gateway_acting_for_a_tenant_admin_cannot_back_up_storage(stack: RunningStack) -> None:
    """Even the gateway's certificate needs an assertion naming a system admin."""
    tenant_admin = Principal("alice", "acme", frozenset({"admin"}))
    with (
        internal_channel(
            stack.fields["storage"], "storage", _secrets(stack), principal=tenant_admin
        ) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        storage_pb2_grpc.StorageStub(channel).BackupStorage(
            storage_pb2.BackupStorageRequest(path="/tmp/stolen"), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admins of the system tenant" in refused.value.details()


def test_only_the_scheduler_may_load_models_on_a_worker(stack: RunningStack) -> None:
    for caller in ("gateway", "trainer", "storage"):
        with (
            internal_channel(
                stack.fields["inference-worker"],
                "inference-worker",
                _secrets(stack),
                caller=caller,
                principal=None,
            ) as channel,
            pytest.raises(grpc.RpcError) as refused,
        ):
            worker_pb2_grpc.InferenceWorkerStub(channel).LoadModel(
                worker_pb2.LoadModelRequest(model="anything"), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, caller
        assert refused.value.details() == f"{caller} may not call LoadModel"


def test_a_certificate_of_the_ca_names_who_it_is(stack: RunningStack) -> None:
    """The identity each instance holds is in its certificate's SAN (for the operator
    reading a refusal, and for the caller table)."""
    identity = identity_for(_secrets(stack), "trainer", "t-1")
    assert str(identity.peer) == "spiffe://llmos/trainer/t-1"
