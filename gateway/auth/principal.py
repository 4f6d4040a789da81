"""Who is calling: the verified identity behind a bearer token."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from gateway.auth.scopes import ADMIN, SYSTEM_TENANT
from llmos.errors import PermissionDenied


@dataclass(frozen=True)
class Principal:
    """A program (client credentials) or a person (password + TOTP) with a tenant."""

    subject: str
    tenant: str
    client_id: str
    scopes: frozenset[str]
    token_id: str = ""
    expires_at: float = 0.0
    is_user: bool = False
    #: an API key (gateway.auth.api_keys): client_id and token_id are the key's id
    api_key: bool = False

    @property
    def is_system_admin(self) -> bool:
        """Admins of the system tenant manage every tenant and see system events."""
        return self.tenant == SYSTEM_TENANT and ADMIN in self.scopes

    def may_manage(self, tenant: str) -> bool:
        """Whether this principal may administer `tenant`."""
        return ADMIN in self.scopes and (self.is_system_admin or tenant == self.tenant)

    def require_tenant(self, tenant: str, what: str) -> None:
        """PERMISSION_DENIED unless this principal may act on `tenant`'s `what`."""
        if not self.may_manage(tenant):
            raise PermissionDenied(
                f"{what} belongs to tenant {tenant!r}; a principal of tenant {self.tenant!r} "
                "may only manage its own tenant"
            )

    def require_scopes(self, scopes: list[str]) -> None:
        """Nobody grants a scope they do not hold themselves."""
        missing = [s for s in scopes if s not in self.scopes]
        if missing:
            raise PermissionDenied(
                f"cannot grant scope {missing[0]!r}: the caller does not hold it"
            )


@dataclass
class CallRecord:
    """What a handler learns during a call that the guard needs afterwards (audit, quotas)."""

    principal: Principal | None = None
    resource: str = ""
    tokens: int = 0
    cached: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    #: what was asked and answered, for the audit record if its policy keeps content
    prompt: str = ""
    output: str = ""


current_call: ContextVar[CallRecord] = ContextVar("llmos_current_call")


@contextmanager
def inner_call() -> Iterator[None]:
    """Run one of the gateway's own calls (an application's Chat or Embed) inside the
    caller's: its tokens are added to the caller's however it ends (a cache hit writes
    none), and what it records of itself (its model as the resource, a cache hit, its
    prompt) does not replace what the caller's record says."""
    record = call_record()
    saved = dataclasses.replace(record, extra=dict(record.extra))
    record.tokens = 0
    try:
        yield
    finally:
        inner_tokens = record.tokens
        record.resource, record.cached = saved.resource, saved.cached
        record.prompt, record.output = saved.prompt, saved.output
        record.tokens = saved.tokens + inner_tokens


def call_record() -> CallRecord:
    """This call's record (a fresh, unattached one outside guarded calls)."""
    try:
        return current_call.get()
    except LookupError:
        record = CallRecord()
        current_call.set(record)
        return record


def caller() -> Principal:
    """The authenticated principal of the current call."""
    principal = call_record().principal
    if principal is None:  # only reachable if a servicer runs without the guard
        raise PermissionDenied("this call has no authenticated principal")
    return principal
