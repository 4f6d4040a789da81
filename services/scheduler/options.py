"""The scheduler's own configuration (LLMOS_* variables beyond the common ones)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmos.config import EnvReader
from llmos.errors import InvalidArgument
from services.scheduler.fairshare import PriorityClass


@dataclass(frozen=True)
class SchedulerOptions:
    #: tenant -> the priority classes it may use; tenants not listed may use every class
    tenant_classes: dict[str, set[PriorityClass]] = field(default_factory=dict)


def read_scheduler_options(env: EnvReader) -> SchedulerOptions:
    """LLMOS_TENANT_CLASSES: `tenant=class+class,tenant=class`, e.g. `free=normal+batch`."""
    classes: dict[str, set[PriorityClass]] = {}
    for entry in filter(None, (e.strip() for e in env.text("TENANT_CLASSES", "").split(","))):
        tenant, sep, names = entry.partition("=")
        try:
            if not sep or not tenant.strip():
                raise InvalidArgument("entry", f"{entry!r} is not tenant=class+class")
            classes[tenant.strip()] = {PriorityClass.parse(n) for n in names.split("+") if n}
        except InvalidArgument as exc:
            env.errors.append(f"LLMOS_TENANT_CLASSES: {exc.reason}")
    return SchedulerOptions(tenant_classes=classes)
