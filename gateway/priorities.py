"""Who may ask for which priority class. Pure logic, no I/O.

`critical` work overtakes every queue and preempts other tenants' training jobs, so a
tenant may use it only once a system admin grants it (Admin.SetPriorityGrant); the
system tenant's admins always may. Other classes are open to every tenant (the
scheduler may narrow them further per tenant: LLMOS_TENANT_CLASSES)."""

from __future__ import annotations

from gateway.auth.principal import Principal
from llmos.errors import PermissionDenied
from llmos.priority import PriorityClass


def needs_grant(principal: Principal, priority: PriorityClass) -> bool:
    """Whether asking for `priority` depends on the tenant's grant."""
    return priority is PriorityClass.CRITICAL and not principal.is_system_admin


def check_priority(
    principal: Principal, priority: PriorityClass, granted: bool, field: str = "priority"
) -> None:
    """PERMISSION_DENIED naming `field` if `principal` may not use `priority`."""
    if needs_grant(principal, priority) and not granted:
        raise PermissionDenied(
            f"{field}: tenant {principal.tenant!r} may not use priority class 'critical' "
            "(it preempts other tenants' work); a system admin can grant it"
        )
