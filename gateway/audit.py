"""The audit API on the gateway: the internal `llmos.v1.Audit` service, relayed with the
caller's tenant enforced. A tenant's principals (scope `audit:read`) query their own
tenant's records only; admins of the system tenant query any tenant, or all of them.
Only principals of the system tenant may verify the whole log."""

from __future__ import annotations

from typing import Any

from gateway.auth.principal import call_record, caller
from gateway.auth.scopes import SYSTEM_TENANT
from llmos.errors import PermissionDenied
from llmos.links import ServiceLink
from llmos.registry import ServiceRegistry
from llmos.v1 import audit_pb2, audit_pb2_grpc


class AuditRelay(audit_pb2_grpc.AuditServicer):  # type: ignore[misc]
    def __init__(self, registry: ServiceRegistry) -> None:
        self._audit = ServiceLink(registry, "audit", audit_pb2_grpc.AuditStub)

    async def QueryAudit(
        self, request: audit_pb2.QueryAuditRequest, context: Any
    ) -> audit_pb2.QueryAuditResponse:
        principal = caller()
        if not principal.is_system_admin:
            if request.tenant and request.tenant != principal.tenant:
                raise PermissionDenied(
                    f"tenant: records of tenant {request.tenant!r} are not visible to a "
                    f"principal of tenant {principal.tenant!r}"
                )
            request.tenant = principal.tenant
        call_record().resource = f"audit/{request.tenant or '*'}"
        response: audit_pb2.QueryAuditResponse = await self._audit.ask(
            "QueryAudit", request, context
        )
        return response

    async def VerifyAudit(
        self, request: audit_pb2.VerifyAuditRequest, context: Any
    ) -> audit_pb2.VerifyAuditResponse:
        if caller().tenant != SYSTEM_TENANT:
            raise PermissionDenied(
                f"only principals of the {SYSTEM_TENANT!r} tenant may verify the whole audit log"
            )
        call_record().resource = "audit/*"
        response: audit_pb2.VerifyAuditResponse = await self._audit.ask(
            "VerifyAudit", request, context
        )
        return response
