"""The audit API on the gateway: the internal `llmos.v1.Audit` service, relayed with the
caller's tenant enforced. A tenant's principals (scope `audit:read`) query their own
tenant's records only; admins of the system tenant query any tenant, or all of them.
Only principals of the system tenant may verify the whole log."""

from __future__ import annotations

from typing import Any

from gateway.auth.principal import Principal
from gateway.auth.scopes import SYSTEM_TENANT
from gateway.relay import Route, RoutedRelay, no_tenant
from llmos.errors import PermissionDenied
from llmos.links import Links
from llmos.v1 import audit_pb2_grpc


def visible_tenant(request: Any, principal: Principal) -> None:
    """A system admin may query any tenant (or all: none named); anyone else their own."""
    if principal.is_system_admin:
        return
    if request.tenant and request.tenant != principal.tenant:
        raise PermissionDenied(
            f"tenant: records of tenant {request.tenant!r} are not visible to a "
            f"principal of tenant {principal.tenant!r}"
        )
    request.tenant = principal.tenant


#: How the gateway relays each audit RPC.
ROUTES: dict[str, Route] = {
    "QueryAudit": Route(visible_tenant, lambda r: f"audit/{r.tenant or '*'}"),
    "VerifyAudit": Route(
        no_tenant,
        lambda r: "audit/*",
        system_only=f"only principals of the {SYSTEM_TENANT!r} tenant may verify the whole "
        "audit log",
    ),
}


class AuditRelay(RoutedRelay, audit_pb2_grpc.AuditServicer, routes=ROUTES):  # type: ignore[misc]
    """`llmos.v1.Audit` for outside callers, relayed to the internal service."""

    def __init__(self, links: Links) -> None:
        super().__init__(links.to("audit", audit_pb2_grpc.AuditStub))
