"""The gateway's relay tables: every storage and audit RPC is relayed, with the tenant
rule, the audit resource and the system-only refusals each RPC had."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway import audit, storage
from gateway.auth.principal import CallRecord, Principal, current_call
from gateway.relay import RoutedRelay, admit
from llmos.errors import InvalidArgument, PermissionDenied
from llmos.v1 import audit_pb2, storage_pb2


def _principal(tenant: str, *scopes: str) -> Principal:
    return Principal(subject="p", tenant=tenant, client_id="c", scopes=frozenset(scopes))


@pytest.fixture
def call() -> Iterator[CallRecord]:
    record = CallRecord(principal=_principal("acme", "datasets", "audit:read"))
    token = current_call.set(record)
    try:
        yield record
    finally:
        current_call.reset(token)


@pytest.mark.parametrize(
    ("relay", "service"),
    [(storage.StorageRelay, storage_pb2.DESCRIPTOR.services_by_name["Storage"]),
     (audit.AuditRelay, audit_pb2.DESCRIPTOR.services_by_name["Audit"])],
)  # fmt: skip
def test_every_rpc_is_relayed_not_left_unimplemented(
    relay: type[RoutedRelay], service: Any
) -> None:
    for method in service.methods:
        assert method.name in relay.__dict__, f"{method.name} falls through to UNIMPLEMENTED"
        route = relay.routes.get(method.name)
        if route is not None:
            assert route.streams == method.server_streaming


def test_a_request_acts_for_the_callers_tenant_whatever_it_names(call: CallRecord) -> None:
    request = storage_pb2.GetDatasetRequest(tenant="globex", name="train")
    admit(storage.ROUTES["GetDataset"], request)
    assert request.tenant == "acme"
    assert call.resource == "dataset/train"


def test_store_wide_operations_are_for_the_system_tenant_only(call: CallRecord) -> None:
    with pytest.raises(PermissionDenied, match="only admins of the 'system' tenant may back up"):
        admit(storage.ROUTES["BackupStorage"], storage_pb2.BackupStorageRequest(path="/b"))
    call.principal = _principal("system", "admin")
    with pytest.raises(InvalidArgument, match="tenant: is required"):
        admit(storage.ROUTES["SetStorageQuota"], storage_pb2.SetStorageQuotaRequest(bytes=1))
    request = storage_pb2.SetStorageQuotaRequest(tenant="acme", bytes=1)
    admit(storage.ROUTES["SetStorageQuota"], request)
    assert request.tenant == "acme" and call.resource == "tenant/acme"


def test_audit_records_of_another_tenant_are_visible_to_system_admins_only(
    call: CallRecord,
) -> None:
    with pytest.raises(PermissionDenied, match="not visible to a principal of tenant 'acme'"):
        admit(audit.ROUTES["QueryAudit"], audit_pb2.QueryAuditRequest(tenant="globex"))
    mine = audit_pb2.QueryAuditRequest()
    admit(audit.ROUTES["QueryAudit"], mine)
    assert mine.tenant == "acme" and call.resource == "audit/acme"
    with pytest.raises(PermissionDenied, match="may verify the whole audit log"):
        admit(audit.ROUTES["VerifyAudit"], audit_pb2.VerifyAuditRequest())
    call.principal = _principal("system", "admin")
    everyone = audit_pb2.QueryAuditRequest()
    admit(audit.ROUTES["QueryAudit"], everyone)
    assert everyone.tenant == "" and call.resource == "audit/*"
