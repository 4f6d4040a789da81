"""Pure policy logic of the gateway: which scope each RPC needs, tenant rules, hashing."""

from __future__ import annotations

import pytest

from gateway.auth import hashing
from gateway.auth.principal import Principal
from gateway.auth.scopes import RPC_SCOPES, SCOPES, narrow_scopes, required_scope
from gateway.priorities import check_priority, needs_grant
from llmos.errors import PermissionDenied
from llmos.priority import PriorityClass
from llmos.v1 import admin_pb2, apps_pb2, gateway_pb2


def test_every_public_rpc_has_a_known_scope() -> None:
    for service in (gateway_pb2.DESCRIPTOR.services_by_name["Gateway"],
                    apps_pb2.DESCRIPTOR.services_by_name["Applications"],
                    admin_pb2.DESCRIPTOR.services_by_name["Admin"]):  # fmt: skip
        for method in service.methods:
            name = f"/{service.full_name}/{method.name}"
            assert name in RPC_SCOPES, f"{name} has no scope in the policy table"
            assert RPC_SCOPES[name] in SCOPES


def test_health_and_reflection_are_public_and_unknown_rpcs_need_admin() -> None:
    assert required_scope("/grpc.health.v1.Health/Check") is None
    assert required_scope("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None
    assert required_scope("/llmos.v1.Gateway/SomethingNew") == "admin"
    assert required_scope("/llmos.v1.Gateway/Generate") == "inference"


def _principal(tenant: str, *scopes: str) -> Principal:
    return Principal(subject="p", tenant=tenant, client_id="c", scopes=frozenset(scopes))


def test_tenant_rules() -> None:
    system_admin = _principal("system", "admin")
    tenant_admin = _principal("acme", "admin", "inference")
    assert system_admin.may_manage("acme") and system_admin.is_system_admin
    assert tenant_admin.may_manage("acme") and not tenant_admin.may_manage("globex")
    assert not _principal("acme", "inference").may_manage("acme")
    with pytest.raises(PermissionDenied, match="belongs to tenant 'globex'"):
        tenant_admin.require_tenant("globex", "client 'x'")
    with pytest.raises(PermissionDenied, match="cannot grant scope 'training'"):
        tenant_admin.require_scopes(["inference", "training"])


def test_requested_scopes_are_narrowed_to_those_held() -> None:
    assert narrow_scopes(["inference", "models:read"], "") == "inference models:read"
    assert narrow_scopes(["inference", "models:read"], "models:read admin") == "models:read"
    assert narrow_scopes(["inference"], "admin") == ""


def test_password_hashes_are_salted_and_checkable() -> None:
    first, second = hashing.hash_password("hunter2hunter2"), hashing.hash_password("hunter2hunter2")
    assert first != second and "hunter2" not in first
    assert hashing.check_password("hunter2hunter2", first)
    assert not hashing.check_password("hunter3hunter3", first)
    assert not hashing.check_password("anything", "not-a-hash")
    secret = hashing.new_client_secret()
    assert hashing.check_secret(secret, hashing.hash_secret(secret))
    assert not hashing.check_secret(secret + "x", hashing.hash_secret(secret))


def test_critical_priority_needs_a_grant_unless_the_caller_is_a_system_admin() -> None:
    tenant = _principal("acme", "inference", "admin")
    with pytest.raises(PermissionDenied, match=r"^priority: tenant 'acme' may not"):
        check_priority(tenant, PriorityClass.CRITICAL, granted=False)
    check_priority(tenant, PriorityClass.CRITICAL, granted=True)
    check_priority(tenant, PriorityClass.HIGH, granted=False)  # other classes are open
    check_priority(_principal("system", "admin"), PriorityClass.CRITICAL, granted=False)
    assert not needs_grant(_principal("system", "admin"), PriorityClass.CRITICAL)


def test_whoever_may_run_models_may_list_them_and_nothing_more() -> None:
    from gateway.auth.scopes import allows

    listing, generate = "/llmos.v1.Gateway/ListModels", "/llmos.v1.Gateway/Generate"
    assert allows(frozenset({"inference"}), listing, required_scope(listing) or "")
    assert allows(frozenset({"models:read"}), listing, required_scope(listing) or "")
    assert not allows(frozenset({"datasets"}), listing, required_scope(listing) or "")
    assert not allows(frozenset({"models:read"}), generate, required_scope(generate) or "")


def test_knowledge_bases_are_managed_with_datasets_and_asked_with_inference() -> None:
    apps = "/llmos.v1.Applications/"
    assert required_scope(apps + "AddDocuments") == "datasets"
    assert required_scope(apps + "DeleteKnowledgeBase") == "datasets"
    for method in ("Ask", "ExtractEntities", "Translate"):
        assert required_scope(apps + method) == "inference"
